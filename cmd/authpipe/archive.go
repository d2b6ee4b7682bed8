package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/authpipe/authpipe/pipeline"
)

// archiveMessage is one message of a PATH argument of produce or verify.
type archiveMessage struct {
	// key names it: the file's path from PATH's own name down (for a PATH
	// that is a file, its name), and #n for the n-th message of an mbox.
	key string
	// raw is the message; nil when it is over the size bound, tooLarge
	// then saying what was ("the file", or the mbox message after which
	// separator).
	raw      []byte
	tooLarge string
	// mboxFrom is the "From " line before it in an mbox.
	mboxFrom string
}

// walkArchive calls visit with each message under path, in order: path is
// a message file, an mbox file (its first line "From "; mboxrd quoting
// undone), or a directory read recursively in name order (dot files and
// folders skipped, and a Maildir's tmp, which holds deliveries in
// progress). Symbolic links are followed, to files and to folders (a
// folder already walked, as a link back up the tree makes one, is not
// walked again). A message over maxBytes is visited with no raw. It holds
// one message at a time (an mbox reader holds at most one of maxBytes,
// whatever its lines). An input that cannot be read (a link to nothing
// among them), or an error of visit, stops the walk with that error.
func walkArchive(path string, maxBytes int, visit func(archiveMessage) error) error {
	base := filepath.Dir(path)
	walked := map[string]bool{} // folders, by their path with links resolved
	var walk func(name string) error
	walk = func(name string) error {
		if name != path && strings.HasPrefix(filepath.Base(name), ".") {
			return nil
		}
		fi, err := os.Stat(name) // through a link
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		switch {
		case fi.IsDir():
			if filepath.Base(name) == "tmp" && isMaildir(filepath.Dir(name)) {
				return nil // messages still being written
			}
			real, err := filepath.EvalSymlinks(name)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if walked[real] {
				return nil
			}
			walked[real] = true
			entries, err := os.ReadDir(name)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			for _, e := range entries {
				if err := walk(filepath.Join(name, e.Name())); err != nil {
					return err
				}
			}
			return nil
		case fi.Mode().IsRegular():
			// The key names the file from PATH's own name down, so files
			// of the same name in different folders stay apart.
			key, err := filepath.Rel(base, name)
			if err != nil {
				key = filepath.Base(name)
			}
			return walkFile(name, filepath.ToSlash(key), maxBytes, visit)
		}
		return nil // a device, socket or pipe: no message
	}
	return walk(path)
}

// isMaildir reports whether dir has the cur and new subdirectories of a
// Maildir (besides tmp).
func isMaildir(dir string) bool {
	for _, sub := range []string{"cur", "new"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// walkFile visits the message in file name, or each message of an mbox,
// under key (key#n for the n-th of an mbox).
func walkFile(name, key string, maxBytes int, visit func(archiveMessage) error) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("read message: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, _ := br.Peek(64)
	if pipeline.LooksLikeMbox(head) {
		mr := pipeline.NewMboxReader(br, maxBytes)
		for i := 1; ; i++ {
			msg, sep, err := mr.Next()
			k := key + "#" + strconv.Itoa(i)
			switch {
			case errors.Is(err, io.EOF):
				return nil
			case errors.Is(err, pipeline.ErrMessageTooLarge):
				err = visit(archiveMessage{key: k, tooLarge: fmt.Sprintf("the message after %.80q", sep)})
			case err != nil:
				return fmt.Errorf("%s: %w", name, err)
			default:
				err = visit(archiveMessage{key: k, raw: msg, mboxFrom: sep})
			}
			if err != nil {
				return err
			}
		}
	}
	raw, err := io.ReadAll(io.LimitReader(br, int64(maxBytes)+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if len(raw) > maxBytes {
		return visit(archiveMessage{key: key, tooLarge: "the file"})
	}
	return visit(archiveMessage{key: key, raw: raw})
}
