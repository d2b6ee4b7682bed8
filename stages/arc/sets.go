package arc

import (
	"fmt"

	"github.com/authpipe/authpipe/stages/message"
)

// DefaultMaxSets is the largest number of ARC sets a chain may have
// (RFC 8617 4.2.1: instance values range from 1 to 50).
const DefaultMaxSets = 50

// header is one parsed ARC header field.
type header struct {
	idx  int     // index in Message.Fields
	tags tagList // AS and AMS tag-list; empty for AAR
	// payload is the AAR value after "i=N;", trimmed and unfolded.
	payload string
}

// arcSet is the three header fields of one instance (RFC 8617 4.2).
type arcSet struct {
	instance int
	aar      *header
	ams      *header
	as       *header
}

// chainError is a structural or syntactic problem that fails the chain
// before any signature is checked.
type chainError struct{ reason string }

func (e *chainError) Error() string { return e.reason }

func structural(format string, args ...any) error {
	return &chainError{reason: fmt.Sprintf(format, args...)}
}

// collectSets finds every ARC header field of m, parses it and groups the
// fields into sets by instance (RFC 8617 5.2 step 1). It returns nil, nil
// when there are none. The chain is structurally invalid (error) if a field
// cannot be parsed, an instance has more or fewer than one field of each
// kind, the instances are not exactly 1..N, or N exceeds maxSets
// (RFC 8617 4.2.1, 5.1.2). At most 3*maxSets fields are examined: a
// message carrying more is rejected without parsing the rest.
func collectSets(m *message.Message, maxSets int) ([]arcSet, error) {
	count := 0
	for i := range m.Fields {
		switch m.Fields[i].Key {
		case keyAAR, keyAMS, keyAS:
			count++
		}
	}
	if count == 0 {
		return nil, nil
	}
	if count > 3*maxSets {
		return nil, structural("%d ARC header fields, more than %d sets allow", count, maxSets)
	}
	hdrs := make([]header, 0, count)
	byInst := make(map[int]*arcSet, count/3+1)
	maxInst := 0
	for i := range m.Fields {
		f := &m.Fields[i]
		var kind string
		switch f.Key {
		case keyAAR:
			kind = "ARC-Authentication-Results"
		case keyAMS:
			kind = "ARC-Message-Signature"
		case keyAS:
			kind = "ARC-Seal"
		default:
			continue
		}
		hdrs = append(hdrs, header{idx: i})
		h := &hdrs[len(hdrs)-1]
		var inst int
		if f.Key == keyAAR {
			n, payload, err := parseAAR(f.Value, maxSets)
			if err != nil {
				return nil, structural("%s: %v", kind, err)
			}
			inst, h.payload = n, unfold(payload)
		} else {
			tags, err := parseTags(f.Value)
			if err != nil {
				return nil, structural("%s: %v", kind, err)
			}
			iv, ok := tags.bytes("i")
			if !ok {
				return nil, structural("%s: no i= tag", kind)
			}
			n, err := parseInstance(iv, maxSets)
			if err != nil {
				return nil, structural("%s: %v", kind, err)
			}
			inst, h.tags = n, tags
		}
		s := byInst[inst]
		if s == nil {
			s = &arcSet{instance: inst}
			byInst[inst] = s
		}
		var slot **header
		switch f.Key {
		case keyAAR:
			slot = &s.aar
		case keyAMS:
			slot = &s.ams
		default:
			slot = &s.as
		}
		if *slot != nil {
			return nil, structural("two %s fields with i=%d", kind, inst)
		}
		*slot = h
		maxInst = max(maxInst, inst)
	}
	if len(byInst) != maxInst {
		for i := 1; i <= maxInst; i++ {
			if byInst[i] == nil {
				return nil, structural("ARC set i=%d is missing (highest instance %d)", i, maxInst)
			}
		}
	}
	sets := make([]arcSet, maxInst)
	for i := 1; i <= maxInst; i++ {
		s := byInst[i]
		switch {
		case s.aar == nil:
			return nil, structural("ARC set i=%d has no ARC-Authentication-Results", i)
		case s.ams == nil:
			return nil, structural("ARC set i=%d has no ARC-Message-Signature", i)
		case s.as == nil:
			return nil, structural("ARC set i=%d has no ARC-Seal", i)
		}
		sets[i-1] = *s
	}
	return sets, nil
}
