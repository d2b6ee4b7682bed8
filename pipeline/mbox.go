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

// ErrMessageTooLarge is returned (wrapped, with the message's separator
// line) by Next for a message over the reader's bound. The reader has then
// skipped that message, and the next call to Next returns the one after it:
// one oversized message in an archive does not hide the rest.
var ErrMessageTooLarge = errors.New("mbox: message larger than the bound")

// maxSeparatorBytes bounds the "From " line kept for a message (the rest of
// a longer line is read and dropped): it names the message in errors, and
// real separators are an address and a date.
const maxSeparatorBytes = 1000

var fromPrefix = []byte("From ")

// NewMboxReader reads from r. A message over maxBytes (0: no bound) makes
// Next return ErrMessageTooLarge. The reader holds at most one message of
// up to maxBytes, one separator line and a 64 KiB buffer, however long
// the lines of the input are.
func NewMboxReader(r io.Reader, maxBytes int) *MboxReader {
	return &MboxReader{r: bufio.NewReaderSize(r, 64<<10), maxBytes: maxBytes}
}

// Next returns the next message, its "From " separator line (without the
// line ending), or io.EOF after the last one. After ErrMessageTooLarge
// Next may be called again; after any other error it returns that error's
// kind of end (ErrNotMbox: io.EOF next; a read error: the read error).
func (m *MboxReader) Next() (msg []byte, fromLine string, err error) {
	if m.done {
		return nil, "", io.EOF
	}
	if !m.started {
		m.started = true
		head, err := m.r.Peek(len(fromPrefix))
		if len(head) == 0 && err == io.EOF {
			m.done = true
			return nil, "", io.EOF
		}
		if !bytes.Equal(head, fromPrefix) {
			m.done = true
			return nil, "", ErrNotMbox
		}
		if err := m.readSeparator(); err != nil {
			return nil, "", err
		}
	}
	sep := trimEOL(m.sep)
	var buf bytes.Buffer
	tooLarge := false
	lineStart := true
	for {
		// ReadSlice hands out at most the buffer's 64 KiB at a time, so a
		// line without an end never grows memory past the bound.
		chunk, err := m.r.ReadSlice('\n')
		if len(chunk) > 0 {
			if lineStart && bytes.HasPrefix(chunk, fromPrefix) {
				if err := m.finishSeparator(chunk, err); err != nil {
					return nil, sep, err
				}
				return m.result(buf.Bytes(), sep, tooLarge)
			}
			if lineStart && isQuotedFrom(chunk) {
				chunk = chunk[1:]
			}
			if !tooLarge {
				if m.maxBytes > 0 && buf.Len()+len(chunk) > m.maxBytes {
					tooLarge = true
					buf = bytes.Buffer{} // the rest of it is read and dropped
				} else {
					buf.Write(chunk)
				}
			}
			lineStart = chunk[len(chunk)-1] == '\n'
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case err == io.EOF:
			m.done = true
			return m.result(buf.Bytes(), sep, tooLarge)
		default:
			m.done = true
			return nil, sep, fmt.Errorf("mbox: %w", err)
		}
	}
}

func (m *MboxReader) result(msg []byte, sep string, tooLarge bool) ([]byte, string, error) {
	if tooLarge {
		return nil, sep, fmt.Errorf("%w: the message after %q is larger than %d bytes", ErrMessageTooLarge, sep, m.maxBytes)
	}
	return dropSeparatorBlank(msg), sep, nil
}

// readSeparator reads the "From " line at the reader's position into m.sep.
func (m *MboxReader) readSeparator() error {
	chunk, err := m.r.ReadSlice('\n')
	return m.finishSeparator(chunk, err)
}

// finishSeparator keeps a copy of first, the start of a "From " line that
// ReadSlice returned with err, as m.sep (at most maxSeparatorBytes of it),
// reading and dropping the rest of a longer line.
func (m *MboxReader) finishSeparator(first []byte, err error) error {
	m.sep = append(m.sep[:0], first[:min(len(first), maxSeparatorBytes)]...)
	for errors.Is(err, bufio.ErrBufferFull) {
		_, err = m.r.ReadSlice('\n')
	}
	switch {
	case err == nil:
		return nil
	case err == io.EOF:
		// A separator at the end of the input: the next message is
		// empty, and the last.
		return nil
	default:
		m.done = true
		return fmt.Errorf("mbox: %w", err)
	}
}

// LooksLikeMbox reports whether head, the start of a file, begins with an
// mbox separator: "From " not followed (after blanks) by a colon, which
// would make it an RFC 5322 From field in the obsolete syntax that allows
// blanks before the colon (RFC 5322 4.5.1).
func LooksLikeMbox(head []byte) bool {
	if !bytes.HasPrefix(head, fromPrefix) {
		return false
	}
	rest := bytes.TrimLeft(head[len(fromPrefix):], " \t")
	return len(rest) == 0 || rest[0] != ':'
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
