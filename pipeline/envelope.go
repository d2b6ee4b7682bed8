package pipeline

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/stages"
)

// Record header names of the mail.raw topic contract (docs/ARCHITECTURE,
// "Topic contracts"). The value of a record is the message exactly as
// received; these headers carry the SMTP envelope.
const (
	HeaderClientIP   = "smtp.client-ip"
	HeaderHELO       = "smtp.helo"
	HeaderMailFrom   = "smtp.mail-from" // empty value = null sender <>
	HeaderRcptTo     = "smtp.rcpt-to"   // one header per recipient
	HeaderReceivedAt = "smtp.received-at"
	HeaderQueueID    = "mta.queue-id" // optional
	// HeaderError is added to records sent to the dead-letter topic.
	HeaderError = "authpipe.error"
)

// DecodeError says why a record cannot be verified. Records that fail to
// decode, and those whose verification panicked, go to the dead-letter
// topic with Error() in the authpipe.error header.
type DecodeError struct {
	// Kind is a short class used as a metric label: no-envelope,
	// bad-envelope, not-a-message, too-large, or KindVerifyPanic.
	Kind   string
	Reason string
}

// KindVerifyPanic is the DecodeError kind of a record whose verification
// panicked: a bug in authpipe, not in the record, which is worth verifying
// again once the bug is fixed.
const KindVerifyPanic = "verify-panic"

func (e *DecodeError) Error() string { return e.Kind + ": " + e.Reason }

// Input is one decoded mail.raw record.
type Input struct {
	Raw      []byte
	Envelope stages.Envelope
	QueueID  string
}

// Decode extracts the message and its SMTP envelope from a mail.raw record.
// maxBytes bounds the message size (0 = no bound). Decode never panics on
// bad input; every problem is a *DecodeError.
//
// A record is undecodable when it carries none of the smtp.* envelope
// headers (no-envelope), when a header value is malformed: a client IP that
// is not an IP address, a received-at that is not RFC 3339, a header given
// more than once where one is allowed (bad-envelope), when the value is not
// an RFC 5322 message: empty, or not starting with a header field (RFC 5322
// 2.2) (not-a-message), or when it is larger than maxBytes or its headers
// larger than MaxHeaderBytes or its key than MaxKeyBytes (too-large).
func Decode(r *kgo.Record, maxBytes int) (*Input, error) {
	if n := headerBytes(r); n > MaxHeaderBytes {
		return nil, &DecodeError{"too-large", fmt.Sprintf("record headers are %d bytes, the cap is %d", n, MaxHeaderBytes)}
	}
	if len(r.Key) > MaxKeyBytes {
		return nil, &DecodeError{"too-large", fmt.Sprintf("record key is %d bytes, the cap is %d", len(r.Key), MaxKeyBytes)}
	}
	in := &Input{Raw: r.Value}
	var seen int
	var once uint8 // bit per header allowed once
	for _, h := range r.Headers {
		var bit uint8
		switch h.Key {
		case HeaderClientIP:
			bit = 1
		case HeaderHELO:
			bit = 2
		case HeaderMailFrom:
			bit = 4
		case HeaderReceivedAt:
			bit = 8
		case HeaderQueueID:
			bit = 16
		case HeaderRcptTo:
		default:
			continue // not ours: no conversion, no allocation
		}
		if once&bit != 0 {
			return nil, &DecodeError{"bad-envelope", fmt.Sprintf("header %s given more than once", h.Key)}
		}
		once |= bit
		v := string(h.Value)
		switch h.Key {
		case HeaderClientIP:
			seen++
			ip, err := stages.ParseClientIP(v)
			if err != nil {
				return nil, &DecodeError{"bad-envelope", fmt.Sprintf("header %s: %v", h.Key, err)}
			}
			in.Envelope.ClientIP = ip
		case HeaderHELO:
			seen++
			in.Envelope.HELO = v
		case HeaderMailFrom:
			seen++
			in.Envelope.MailFrom = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")
		case HeaderRcptTo:
			seen++
			in.Envelope.RcptTo = append(in.Envelope.RcptTo, strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">"))
		case HeaderReceivedAt:
			seen++
			t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
			if err != nil {
				return nil, &DecodeError{"bad-envelope", fmt.Sprintf("header %s: want RFC 3339: %v", h.Key, err)}
			}
			in.Envelope.ReceivedAt = t
		case HeaderQueueID:
			in.QueueID = v
		}
	}
	if seen == 0 {
		return nil, &DecodeError{"no-envelope", "record has no smtp.* envelope headers"}
	}
	if maxBytes > 0 && len(r.Value) > maxBytes {
		return nil, &DecodeError{"too-large", fmt.Sprintf("message is %d bytes, the cap is %d", len(r.Value), maxBytes)}
	}
	if err := looksLikeMessage(r.Value); err != "" {
		return nil, &DecodeError{"not-a-message", err}
	}
	return in, nil
}

// MaxHeaderBytes caps a record's headers (keys and values, the envelope's
// and any other's): 1 MiB, room for some 4,000 recipients of RFC 5321's
// longest path (256 octets, 4.5.3.1.3), where MTAs accept 100 to 1,000 per
// message (RFC 5321 4.5.3.1.8 asks for at least 100). The message's own
// cap (MaxMessageBytes) counts only the value; without this one a record
// could carry tens of MiB of headers past the in-flight bytes bound.
const MaxHeaderBytes = 1 << 20

// MaxKeyBytes caps a record's key (the verdict's key too): 64 KiB, where
// a queue id or a file's path takes tens of bytes.
const MaxKeyBytes = 64 << 10

// headerBytes is the size of r's headers, keys and values.
func headerBytes(r *kgo.Record) int {
	n := 0
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// recordBytes is what a record in flight holds: its key, value and headers.
func recordBytes(r *kgo.Record) int64 { return int64(len(r.Key) + len(r.Value) + headerBytes(r)) }

// looksLikeMessage is a cheap check that b starts with an RFC 5322 header
// field: a field name of printable ASCII other than ':' (RFC 5322 2.2),
// then ':', on a line of its own. The engine does the full parse and turns
// later defects into permerror verdicts.
func looksLikeMessage(b []byte) string {
	if len(b) == 0 {
		return "empty value"
	}
	line := b
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line = b[:i]
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return "first line is not a header field"
	}
	for _, c := range line[:colon] {
		if c < 33 || c > 126 {
			return "first line is not a header field"
		}
	}
	return ""
}

// EnvelopeHeaders renders env (and an optional queue id) as mail.raw record
// headers: the inverse of Decode.
func EnvelopeHeaders(env stages.Envelope, queueID string) []kgo.RecordHeader {
	hs := make([]kgo.RecordHeader, 0, 5+len(env.RcptTo))
	if env.ClientIP.IsValid() {
		hs = append(hs, kgo.RecordHeader{Key: HeaderClientIP, Value: []byte(env.ClientIP.String())})
	}
	if env.HELO != "" {
		hs = append(hs, kgo.RecordHeader{Key: HeaderHELO, Value: []byte(env.HELO)})
	}
	hs = append(hs, kgo.RecordHeader{Key: HeaderMailFrom, Value: []byte(env.MailFrom)})
	for _, r := range env.RcptTo {
		hs = append(hs, kgo.RecordHeader{Key: HeaderRcptTo, Value: []byte(r)})
	}
	if !env.ReceivedAt.IsZero() {
		hs = append(hs, kgo.RecordHeader{Key: HeaderReceivedAt, Value: []byte(env.ReceivedAt.Format(time.RFC3339Nano))})
	}
	if queueID != "" {
		hs = append(hs, kgo.RecordHeader{Key: HeaderQueueID, Value: []byte(queueID)})
	}
	return hs
}
