package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// MaxInstancesPerHost bounds the default transactional IDs one group can
// claim on one host (claimTransactionalID): past it, Run fails and asks for
// --transactional-id.
const MaxInstancesPerHost = 64

// claimTransactionalID picks the default transactional ID of an
// instance of group on host that talks to brokers, and holds it until
// release is called or the process ends.
//
// The ID must be stable across an instance's restarts, so that a restart
// fences its crashed predecessor and ends the transaction it left open at
// once instead of after the transaction timeout, and distinct among the
// instances running, or the one started later fences the other. A host name
// alone is both only while one instance of a group runs on each host. So
// the instances of one group on one host, with the same brokers, take
// numbered slots: each holds an flock(2) on its slot's file in dir, which
// the kernel releases when the process ends however it ends. The first
// instance gets GROUP-HOST (as before slots existed), the second
// GROUP-HOST-2, and so on; a restart takes the lowest free slot, which is
// the crashed instance's own unless another instance took it meanwhile
// (and then that one has fenced the crashed one's transaction).
//
// The brokers are part of the slot files' names (sorted: their order does
// not matter) so that instances of different clusters do not take each
// other's slots; instances naming one cluster by different brokers take
// the same slot and fence each other, as do instances that do not share dir
// (a service with a private /tmp), and the first one then stops saying so.
// Where flock(2) does not exist every instance gets GROUP-HOST.
//
// The slot files are never removed: removing one while another process
// opens it would let two processes hold "the" lock.
//
// If dir cannot be used (a read-only file system, say), it returns the
// first slot's ID unclaimed with an error saying why, for the caller to log
// (a container with one instance loses nothing); with every slot taken it
// returns "" and an error.
func claimTransactionalID(dir, group, host string, brokers []string) (id string, release func(), err error) {
	seeds := slices.Clone(brokers)
	slices.Sort(seeds)
	sum := sha256.Sum256([]byte(group + "\x00" + strings.Join(slices.Compact(seeds), ",")))
	prefix := filepath.Join(dir, "authpipe-instance-"+hex.EncodeToString(sum[:8])+"-")
	first := group + "-" + host
	for slot := range MaxInstancesPerHost {
		f, err := os.OpenFile(prefix+strconv.Itoa(slot)+".lock", os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return first, func() {}, fmt.Errorf("pipeline: claim a transactional id: %w", err)
		}
		switch err := lockFile(f); {
		case err == nil:
			id := first
			if slot > 0 {
				id += "-" + strconv.Itoa(slot+1)
			}
			return id, func() { _ = f.Close() }, nil
		case errors.Is(err, errLocked):
			_ = f.Close()
		default:
			_ = f.Close()
			return first, func() {}, fmt.Errorf("pipeline: claim a transactional id: lock %s: %w", f.Name(), err)
		}
	}
	return "", nil, fmt.Errorf("pipeline: %d instances of group %q run on this host already; give this one a --transactional-id", MaxInstancesPerHost, group)
}
