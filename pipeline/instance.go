package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
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
// instance of group on host that talks to the cluster with ID cluster
// (from its metadata; "" if unknown) through brokers, and holds it until
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
// The cluster is part of the slot files' names, so that instances of
// different clusters do not take each other's slots (a slot freed by a
// crash must go to an instance that fences on the crashed one's cluster).
// Without its ID (a broker that does not tell it), the sorted seed brokers
// stand for it: instances naming one such cluster by different brokers
// then take the same slot and fence each other, as do instances that do
// not share dir (a service with a private /tmp), and the first one then
// stops saying so. Where flock(2) does not exist every instance gets
// GROUP-HOST.
//
// A slot's file is removed when its instance gives the slot up (release);
// one that ends otherwise leaves it for the next to take. Removing a lock
// file can let two processes think they hold it (one opened the file just
// before it was removed and locks it after, while another creates and locks
// a new one), so lockSlot checks that the file it locked still has the name.
//
// If dir cannot be used (a read-only file system, say), it returns the
// first slot's ID unclaimed with an error saying why, for the caller to log
// (a container with one instance loses nothing); if that happens past a
// slot held by another instance, or every slot is taken, it returns "" and
// an error.
func claimTransactionalID(dir, group, host, cluster string, brokers []string) (id string, release func(), err error) {
	prefix := slotPrefix(dir, group, cluster, brokers)
	first := group + "-" + host
	for slot := range MaxInstancesPerHost {
		path := prefix + strconv.Itoa(slot) + ".lock"
		f, err := lockSlot(path)
		switch {
		case err == nil:
			id := first
			if slot > 0 {
				id += "-" + strconv.Itoa(slot+1)
			}
			return id, func() { _ = os.Remove(path); _ = f.Close() }, nil
		case errors.Is(err, errLocked):
		case slot == 0:
			return first, func() {}, fmt.Errorf("pipeline: claim a transactional id: %w", err)
		default:
			// The first slot is held: its ID would fence the holder.
			return "", nil, fmt.Errorf("pipeline: claim a transactional id: %w; give this instance a --transactional-id", err)
		}
	}
	return "", nil, fmt.Errorf("pipeline: %d instances of group %q run on this host already; give this one a --transactional-id", MaxInstancesPerHost, group)
}

// slotPrefix is the path of the slot files of group's instances on the
// cluster, but for the slot number and ".lock".
func slotPrefix(dir, group, cluster string, brokers []string) string {
	key := "cluster " + cluster
	if cluster == "" {
		seeds := slices.Clone(brokers)
		slices.Sort(seeds)
		key = "brokers " + strings.Join(slices.Compact(seeds), ",")
	}
	sum := sha256.Sum256([]byte(group + "\x00" + key))
	return filepath.Join(dir, "authpipe-instance-"+hex.EncodeToString(sum[:8])+"-")
}

// lockSlot opens path (creating it) and locks it; errLocked if another open
// file holds the lock. If the file it locked no longer has the name (its
// holder removed it in between), it tries again, a few times, and then
// counts the slot as taken.
func lockSlot(path string) (*os.File, error) {
	for range 8 {
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		// Readable by all whatever the umask, so that instances run by
		// other users can open, and so lock, the file (a no-op, failing,
		// on a file another user created).
		_ = f.Chmod(0o644)
		if err := lockFile(f); err != nil {
			_ = f.Close()
			if !errors.Is(err, errLocked) {
				err = fmt.Errorf("lock %s: %w", path, err)
			}
			return nil, err
		}
		named, err := stillNamed(f, path)
		if named {
			return f, nil
		}
		_ = f.Close()
		if err != nil {
			return nil, err
		}
	}
	return nil, errLocked
}

// stillNamed reports whether path names the file f has open.
func stillNamed(f *os.File, path string) (bool, error) {
	open, err := f.Stat()
	if err != nil {
		return false, err
	}
	named, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil && os.SameFile(open, named), err
}
