package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/message"
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

// envelopeRule gives each message of an archive its SMTP envelope, for
// produce and verify: the flags' (base), with the message's own arrival
// time (ownArrival: messageArrival) and, under --envelope message
// (fromTrace), what its trace fields record (messageEnvelope, passing over
// the hops of internal). A time the flags fixed (arrivalGiven) wins over
// the message's.
type envelopeRule struct {
	base         stages.Envelope
	ownArrival   bool
	fromTrace    bool
	arrivalGiven bool
	internal     []netip.Prefix
}

// newEnvelopeRule checks --envelope (flags or message) and --internal-net
// and returns their rule over base.
func newEnvelopeRule(base stages.Envelope, envelope string, internalNets []string, ownArrival, arrivalGiven bool) (envelopeRule, error) {
	if envelope != "flags" && envelope != "message" {
		return envelopeRule{}, usagef("--envelope: want flags or message, got %q", envelope)
	}
	if len(internalNets) > 0 && envelope != "message" {
		return envelopeRule{}, usagef("--internal-net needs --envelope message")
	}
	internal, err := prefixList("internal-net", internalNets)
	if err != nil {
		return envelopeRule{}, err
	}
	return envelopeRule{base: base, ownArrival: ownArrival, fromTrace: envelope == "message", arrivalGiven: arrivalGiven, internal: internal}, nil
}

// of is the envelope of the message raw (after the mbox line mboxFrom, if
// any); hasReturnPath is false when, from the trace fields, it had no
// Return-Path (its MAIL FROM is then base's). The error is
// errNoOutsideClient's, or the message's parse error, under fromTrace.
func (r envelopeRule) of(raw []byte, mboxFrom string) (env stages.Envelope, hasReturnPath bool, err error) {
	env = r.base
	if r.ownArrival || (r.fromTrace && !r.arrivalGiven) {
		if t, ok := messageArrival(raw, mboxFrom); ok {
			env.ReceivedAt = t
		}
	}
	if !r.fromTrace {
		return env, true, nil
	}
	got, hasReturnPath, err := messageEnvelope(raw, env, r.internal)
	if err != nil {
		return env, false, err
	}
	if r.arrivalGiven {
		got.ReceivedAt = r.base.ReceivedAt
	}
	return got, hasReturnPath, nil
}

// errNoOutsideClient is messageEnvelope's error for a message none of
// whose Received fields records a client outside the provider.
var errNoOutsideClient = errors.New("no Received field names a client outside the provider (see --internal-net)")

// messageEnvelope reads the SMTP envelope an archived message was received
// with from its trace fields (RFC 5321 4.4), over fallback, which gives
// what they do not: the client IP, HELO, RCPT TO and arrival time of the
// topmost Received field whose client address is not internal (loopback,
// private, link-local, unspecified, or in one of internal: the hops the
// provider's own hosts wrote, MX to store, come first from the top), and
// the MAIL FROM of the topmost Return-Path field (hasReturnPath), else of
// that Received field's Exim "(envelope-from <...>)" comment.
func messageEnvelope(raw []byte, fallback stages.Envelope, internal []netip.Prefix) (env stages.Envelope, hasReturnPath bool, err error) {
	m, err := message.Parse(raw, message.Limits{MaxSize: len(raw) + 2})
	if err != nil {
		return fallback, false, err
	}
	env = fallback
	tr := m.Trace()
	found := false
	var hop message.Received
	for _, f := range tr.Received {
		r, err := message.ParseReceived(f.Value)
		if err != nil || !r.ClientIP.IsValid() || internalAddr(r.ClientIP, internal) {
			continue
		}
		hop, found = r, true
		break
	}
	if !found {
		return fallback, false, errNoOutsideClient
	}
	env.ClientIP = hop.ClientIP
	if hop.HELO != "" {
		env.HELO = hop.HELO
	}
	if rcpt, ok := envelopeAddress(hop.For); ok && rcpt != "" {
		env.RcptTo = []string{rcpt}
	}
	if !hop.Date.IsZero() {
		env.ReceivedAt = hop.Date
	}
	if len(tr.ReturnPath) > 0 {
		env.MailFrom, hasReturnPath = envelopeAddress(string(tr.ReturnPath[0].Value))
	} else if hop.HasEnvelopeFrom {
		env.MailFrom, hasReturnPath = envelopeAddress(hop.EnvelopeFrom)
	}
	if !hasReturnPath {
		env.MailFrom = fallback.MailFrom
	}
	return env, hasReturnPath, nil
}

// envelopeAddress reads a path as a trace field writes it ("<a@b>", "<>"
// for the null sender, or bare) as the envelope carries it: without the
// angle brackets. It reports false for one that is not an address: angle
// brackets, space or control characters left inside.
func envelopeAddress(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if inner, ok := strings.CutPrefix(s, "<"); ok {
		end := strings.IndexByte(inner, '>')
		if end < 0 || strings.TrimSpace(inner[end+1:]) != "" {
			return "", false
		}
		s = inner[:end]
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' {
			return "", false
		}
	}
	return s, true
}

// internalAddr reports whether a Received field's client address is one of
// the provider's own: loopback, private (RFC 1918, RFC 4193), link-local,
// unspecified, or in one of prefixes (an IPv4-mapped prefix read as the
// IPv4 one it maps).
func internalAddr(ip netip.Addr, prefixes []netip.Prefix) bool {
	if !ip.IsGlobalUnicast() || ip.IsPrivate() {
		return true // loopback, link-local, unspecified, multicast, broadcast; RFC 1918, RFC 4193
	}
	for _, p := range prefixes {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// messageArrival is when an archived message arrived: the date of its
// topmost Received field (RFC 5321 4.4, the last hop's, after the last
// ";"), else the date of its mbox "From " line (RFC 4155: asctime, taken as
// UTC). ok is false when neither gives one.
func messageArrival(raw []byte, mboxFrom string) (time.Time, bool) {
	if m, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		if rcvd := m.Header["Received"]; len(rcvd) > 0 {
			if i := strings.LastIndexByte(rcvd[0], ';'); i >= 0 {
				if t, err := mail.ParseDate(strings.TrimSpace(rcvd[0][i+1:])); err == nil {
					return t.UTC(), true
				}
			}
		}
	}
	// "From sender Mon Nov 23 09:15:00 2026": the date follows the sender.
	f := strings.Fields(strings.TrimPrefix(mboxFrom, "From "))
	if len(f) >= 6 {
		date := strings.Join(f[1:], " ")
		for _, layout := range []string{time.ANSIC, "Mon Jan 2 15:04:05 2006 -0700", "Mon Jan 2 15:04:05 -0700 2006", "Mon Jan 2 15:04:05 MST 2006"} {
			if t, err := time.Parse(layout, date); err == nil {
				return t.UTC(), true
			}
		}
	}
	return time.Time{}, false
}

// walkEnvelopes calls visit with each message of the --envelopes file name
// (JSON lines: parseEnvelopeLine; blank lines and lines starting with #
// skipped), its envelope and queue id, in order. A message's key is its
// queue id, else its "key", else its file's name, else FILE:LINE; one over
// maxBytes is visited with no raw, keyed FILE:LINE. A line that does not
// parse, a message file that cannot be read, or an error of visit stops
// the walk with that error, naming the line.
func walkEnvelopes(name string, maxBytes int, visit func(m archiveMessage, env stages.Envelope, queueID string) error) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("--envelopes: %w", err)
	}
	defer f.Close()
	dir := filepath.Dir(name)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxBytes*2+1<<20)
	for ln := 1; sc.Scan(); ln++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		e, env, err := parseEnvelopeLine(line, time.Now().UTC())
		if err != nil {
			return fmt.Errorf("%s:%d: %w", name, ln, err)
		}
		raw := []byte(e.Raw)
		key := e.Key
		tooLarge := len(raw) > maxBytes
		if e.Path != "" {
			p := e.Path
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			raw, tooLarge, err = readBounded(p, maxBytes)
			if err != nil {
				return fmt.Errorf("%s:%d: %w", name, ln, err)
			}
			if key == "" {
				key = filepath.Base(p)
			}
		}
		if tooLarge {
			if err := visit(archiveMessage{key: fmt.Sprintf("%s:%d", name, ln), tooLarge: "the message"}, env, e.QueueID); err != nil {
				return err
			}
			continue
		}
		if e.QueueID != "" {
			key = e.QueueID
		}
		if key == "" {
			key = fmt.Sprintf("%s:%d", filepath.Base(name), ln)
		}
		if err := visit(archiveMessage{key: key, raw: raw}, env, e.QueueID); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
