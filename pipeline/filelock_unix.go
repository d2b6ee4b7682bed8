//go:build unix

package pipeline

import (
	"errors"
	"os"
	"syscall"
)

// lockFile takes an exclusive lock on f (flock(2)), which the kernel
// releases when the process ends, however it ends; errLocked if another
// open file (of this process or another) holds it.
func lockFile(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errLocked
	}
	return err
}
