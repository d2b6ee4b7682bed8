package pipeline

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestClaimTransactionalID: instances of one group on one host, with the
// same brokers, get distinct IDs, the first the ID of before slots
// existed; a slot given up (an instance stopped or killed) goes to the
// next instance to start; other groups and other clusters do not take
// each other's slots.
func TestClaimTransactionalID(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock(2): every instance gets the first slot")
	}
	dir := t.TempDir()
	brokers := []string{"k2:9092", "k1:9092"}
	claim := func(group string, brokers ...string) (string, func()) {
		t.Helper()
		id, release, err := claimTransactionalID(dir, group, "mx1", "", brokers)
		if err != nil {
			t.Fatal(err)
		}
		return id, release
	}
	a, releaseA := claim("authpipe-verify", brokers...)
	b, releaseB := claim("authpipe-verify", "k1:9092", "k2:9092", "k1:9092") // order and repeats do not matter
	if a != "authpipe-verify-mx1" || b != "authpipe-verify-mx1-2" {
		t.Fatalf("two instances: %q and %q, want authpipe-verify-mx1 and authpipe-verify-mx1-2", a, b)
	}
	if id, release := claim("rescore", brokers...); id != "rescore-mx1" {
		t.Errorf("another group: %q, want rescore-mx1", id)
	} else {
		release()
	}
	if id, release := claim("authpipe-verify", "other:9092"); id != "authpipe-verify-mx1" {
		t.Errorf("another cluster: %q, want authpipe-verify-mx1", id)
	} else {
		release()
	}
	releaseA()
	if id, release := claim("authpipe-verify", brokers...); id != a {
		t.Errorf("after the first stopped: %q, want its %q", id, a)
	} else {
		release()
	}

	// Across processes, as instances are: a process killed gives up its
	// slot (the kernel drops its lock), so its restart takes the slot back
	// and with it the ID that fences what it left open.
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "AUTHPIPE_TEST_CLAIM="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if got := strings.TrimSpace(line); err != nil || got != "authpipe-verify-mx1" {
		t.Fatalf("child process claimed %q (%v), want authpipe-verify-mx1", got, err)
	}
	if id, release := claim("authpipe-verify", brokers...); id != "authpipe-verify-mx1-3" {
		t.Errorf("beside the child and b: %q, want authpipe-verify-mx1-3", id)
	} else {
		release()
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	if id, release := claim("authpipe-verify", brokers...); id != "authpipe-verify-mx1" {
		t.Errorf("after the child was killed: %q, want authpipe-verify-mx1", id)
	} else {
		release()
	}
	releaseB()
	// Slots given up leave no files behind (the killed child's was taken
	// and given up again above).
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("files left: %q", left)
	}
}

// TestClaimRemovedSlot: a slot's holder removes its file when it gives
// the slot up, so another instance may lock a file that no longer has the
// name (opened before the removal, locked after): that lock is not the
// slot, stillNamed tells, and it does not keep the slot from the next
// instance either.
func TestClaimRemovedSlot(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock(2)")
	}
	path := filepath.Join(t.TempDir(), "slot.lock")
	stale, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644) // opened before the holder's release
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if err := os.Remove(path); err != nil { // the holder's release
		t.Fatal(err)
	}
	if err := lockFile(stale); err != nil { // the lock on the removed file succeeds
		t.Fatal(err)
	}
	if named, err := stillNamed(stale, path); named || err != nil {
		t.Errorf("stillNamed of a removed file: %v, %v", named, err)
	}
	f, err := lockSlot(path)
	if err != nil {
		t.Fatalf("lockSlot after a removal: %v", err)
	}
	defer f.Close()
	if named, err := stillNamed(f, path); !named || err != nil {
		t.Errorf("stillNamed of the slot: %v, %v", named, err)
	}
	if _, err := lockSlot(path); !errors.Is(err, errLocked) {
		t.Errorf("a second lockSlot: %v, want errLocked", err)
	}
}

// TestClaimByClusterID: with the cluster's ID known, instances that name
// its brokers differently (an address and a host name, other seeds) still
// take distinct slots, and instances of different clusters each take the
// first.
func TestClaimByClusterID(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock(2)")
	}
	dir := t.TempDir()
	claim := func(cluster string, brokers ...string) string {
		t.Helper()
		id, release, err := claimTransactionalID(dir, "g", "h", cluster, brokers)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(release)
		return id
	}
	if a, b := claim("c1", "127.0.0.1:9092"), claim("c1", "localhost:9092"); a != "g-h" || b != "g-h-2" {
		t.Errorf("one cluster named two ways: %q and %q, want g-h and g-h-2", a, b)
	}
	if c := claim("c2", "127.0.0.1:9092"); c != "g-h" {
		t.Errorf("another cluster at the same address: %q, want g-h", c)
	}
}

// claimChildMain is the child process of TestClaimTransactionalID: it
// claims an ID in dir, prints it and waits to be killed.
func claimChildMain(dir string) int {
	id, _, err := claimTransactionalID(dir, "authpipe-verify", "mx1", "", []string{"k1:9092", "k2:9092"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(id)
	select {}
}

// TestClaimTransactionalIDBounded: past MaxInstancesPerHost instances the
// claim fails and names the option that gets round it; without a usable
// directory the first slot's ID is used unclaimed, as before slots.
func TestClaimTransactionalIDBounded(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock(2)")
	}
	dir := t.TempDir()
	for i := range MaxInstancesPerHost {
		id, release, err := claimTransactionalID(dir, "g", "h", "", nil)
		if err != nil {
			t.Fatalf("instance %d: %v", i+1, err)
		}
		defer release()
		if want := fmt.Sprintf("g-h-%d", i+1); i > 0 && id != want {
			t.Fatalf("instance %d: %q, want %q", i+1, id, want)
		}
	}
	if _, _, err := claimTransactionalID(dir, "g", "h", "", nil); err == nil || !strings.Contains(err.Error(), "--transactional-id") {
		t.Errorf("instance %d: %v, want an error naming --transactional-id", MaxInstancesPerHost+1, err)
	}
	// Past a slot held by another instance, a slot that cannot be used
	// is an error: the first slot's ID would fence its holder.
	_, releaseHeld, err := claimTransactionalID(dir, "g2", "h", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseHeld()
	// A directory where the second slot's file goes cannot be opened as one.
	if err := os.Mkdir(slotPrefix(dir, "g2", "", nil)+"1.lock", 0o755); err != nil {
		t.Fatal(err)
	}
	if id, _, err := claimTransactionalID(dir, "g2", "h", "", nil); id != "" || err == nil || !strings.Contains(err.Error(), "--transactional-id") {
		t.Errorf("second slot unusable: %q, %v; want no id and an error naming --transactional-id", id, err)
	}
	// A directory that cannot be used leaves the first slot's ID,
	// unclaimed, and says why.
	if id, release, err := claimTransactionalID(dir+"/missing", "g", "h", "", nil); id != "g-h" || err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no lock directory: %q, %v; want g-h and the directory's error", id, err)
	} else {
		release()
	}
}
