package arc

import (
	"context"
	"strings"
	"testing"

	"github.com/authpipe/authpipe/stages/message"
)

// FuzzValidate feeds mutated messages (seeded with sealed chains and, when
// the corpus is present, suite messages) to Validate and Seal: they must
// not panic, and results must be one of the three statuses with the
// invariants of Result.
func FuzzValidate(f *testing.F) {
	v := newTestValidator(f, testRecords(edKey))
	f.Add([]byte(baseMessage))
	for hops := 1; hops <= 3; hops++ {
		f.Add(sealChain(f, v, edKey, []byte(baseMessage), hops))
	}
	f.Add([]byte(chainHeaders(3) + "\r\nbody\r\n"))
	f.Add([]byte("ARC-Seal: i=1;;\r\nARC-Authentication-Results: i=1\r\n\r\n"))
	if scs := loadValidationSuiteIfPresent(); scs != nil {
		n := 0
		for _, sc := range scs {
			for _, c := range sc.Cases {
				if n%9 == 0 {
					f.Add([]byte(c.Message))
				}
				n++
			}
		}
	}
	sealer := &Sealer{Domain: "list.example.org", Selector: "s1", Key: edKey, AuthServID: "x", Now: suiteClock}
	// cold holds no keys, so every chain goes through prefetchKeys.
	cold := newTestValidator(f, testRecords(edKey))
	cold.Keys.MaxEntries = -1
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := message.Parse(raw, message.Limits{MaxSize: 1 << 20})
		if err != nil {
			return
		}
		r := v.Validate(context.Background(), m)
		offered := map[string]int{}
		calls := 0
		cold.Prefetch = func(_ context.Context, names []string) {
			calls++
			for _, n := range names {
				offered[n]++
			}
		}
		if rc := cold.Validate(context.Background(), m); rc.Result != r.Result || rc.Reason != r.Reason {
			t.Fatalf("without cached keys %s (%s), with %s (%s)", rc.Result, rc.Reason, r.Result, r.Reason)
		}
		n := 0
		for name, k := range offered {
			if k != 1 {
				t.Fatalf("%s offered %d times", name, k)
			}
			n++
		}
		if n > MaxPrefetchKeys || calls > 1 {
			t.Fatalf("%d keys offered in %d calls", n, calls)
		}
		switch r.Result {
		case ResultNone:
			if r.Instances != 0 || len(r.Sets) != 0 {
				t.Fatalf("none with sets: %+v", r)
			}
		case ResultPass:
			if r.Instances == 0 || len(r.Sets) != r.Instances || r.Reason != "" {
				t.Fatalf("inconsistent pass: %+v", r)
			}
			for _, s := range r.Sets {
				if !s.SealValid {
					t.Fatalf("pass with an invalid seal: %+v", r)
				}
			}
		case ResultFail:
			if r.Reason == "" {
				t.Fatalf("fail without reason: %+v", r)
			}
		default:
			t.Fatalf("unknown result %q", r.Result)
		}
		set, err := sealer.Seal(m, r, "")
		if err == nil && !strings.HasPrefix(set.AS, "ARC-Seal: ") {
			t.Fatalf("bad seal %q", set.AS)
		}
	})
}
