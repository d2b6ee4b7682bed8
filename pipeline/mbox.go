package pipeline

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// MboxReader reads messages from an mbox file in the mboxrd format (the
// "From " separated format of RFC 4155 with reversible quoting): each
// message starts after a line beginning "From ", and lines of the form
// ">From ", ">>From " … have one '>' removed, undoing the escaping the
// writer applied. The blank line a writer puts before the next separator
// is dropped. Line endings are kept as in the file (LF or CRLF), so DKIM
// body hashes of correctly written archives survive.
//
// Plain mboxo files (where ">From " in a body was a real ">From ") read
// back with that one '>' removed; the format cannot tell them apart.
type MboxReader struct {
	r        *bufio.Reader
	maxBytes int
	started  bool
	done     bool
	sep      []byte // the "From " line that began the current message
}

// ErrNotMbox is returned by Next when the input does not start with a
// "From " line.
var ErrNotMbox = errors.New("mbox: input does not start with a \"From \" line")

// NewMboxReader reads from r. A message over maxBytes (0: no bound) makes
// Next return an error.
func NewMboxReader(r io.Reader, maxBytes int) *MboxReader {
	return &MboxReader{r: bufio.NewReaderSize(r, 64<<10), maxBytes: maxBytes}
}

// Next returns the next message, its "From " separator line (without the
// line ending), or io.EOF after the last one.
func (m *MboxReader) Next() (msg []byte, fromLine string, err error) {
	if m.done {
		return nil, "", io.EOF
	}
	if !m.started {
		m.started = true
		line, err := m.r.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			m.done = true
			return nil, "", io.EOF
		}
		if !bytes.HasPrefix(line, []byte("From ")) {
			m.done = true
			return nil, "", ErrNotMbox
		}
		m.sep = line
		if err == io.EOF {
			m.done = true
			return []byte{}, trimEOL(line), nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("mbox: %w", err)
		}
	}
	sep := trimEOL(m.sep)
	var buf bytes.Buffer
	for {
		line, err := m.r.ReadBytes('\n')
		if len(line) > 0 {
			if bytes.HasPrefix(line, []byte("From ")) {
				m.sep = line
				return dropSeparatorBlank(buf.Bytes()), sep, nil
			}
			if isQuotedFrom(line) {
				line = line[1:]
			}
			if m.maxBytes > 0 && buf.Len()+len(line) > m.maxBytes {
				return nil, sep, fmt.Errorf("mbox: message after %q is larger than %d bytes", sep, m.maxBytes)
			}
			buf.Write(line)
		}
		if err == io.EOF {
			m.done = true
			return dropSeparatorBlank(buf.Bytes()), sep, nil
		}
		if err != nil {
			return nil, sep, fmt.Errorf("mbox: %w", err)
		}
	}
}

// isQuotedFrom reports whether line is ">+From ".
func isQuotedFrom(line []byte) bool {
	i := 0
	for i < len(line) && line[i] == '>' {
		i++
	}
	return i > 0 && bytes.HasPrefix(line[i:], []byte("From "))
}

// dropSeparatorBlank removes the one empty line an mbox writer adds after
// each message.
func dropSeparatorBlank(b []byte) []byte {
	switch {
	case bytes.HasSuffix(b, []byte("\r\n\r\n")):
		return b[:len(b)-2]
	case bytes.HasSuffix(b, []byte("\n\n")):
		return b[:len(b)-1]
	}
	return b
}

func trimEOL(b []byte) string {
	return string(bytes.TrimRight(b, "\r\n"))
}
