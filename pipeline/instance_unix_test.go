//go:build unix

package pipeline

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestClaimSlotFileReadable: a slot's file is readable by every user
// whatever the umask, so that an instance of another user can open it to
// try the lock, rather than fail and fall back to the first slot's ID,
// fencing the holder.
func TestClaimSlotFileReadable(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o077))
	dir := t.TempDir()
	_, release, err := claimTransactionalID(dir, "g", "h", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	files, _ := filepath.Glob(filepath.Join(dir, "*.lock"))
	if len(files) != 1 {
		t.Fatalf("slot files %q, want one", files)
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("slot file mode %v under umask 077, want -rw-r--r--", fi.Mode().Perm())
	}
}
