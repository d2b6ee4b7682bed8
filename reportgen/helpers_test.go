package reportgen

import (
	"fmt"
	"testing"
	"time"

	"github.com/authpipe/authpipe/stages/verdict"
)

var testDay = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

// mkVerdict returns a verdict for example.com from source i%256 etc.
func mkVerdict(i int, at time.Time) *verdict.Verdict {
	pass := i%3 != 0
	res := "fail"
	if pass {
		res = "pass"
	}
	disp := "none"
	if !pass {
		disp = "quarantine"
	}
	v := &verdict.Verdict{
		Version:     1,
		EvaluatedAt: at,
		Envelope: verdict.Envelope{
			ClientIP: fmt.Sprintf("192.0.2.%d", i%250), MailFrom: "bounce@mail.example.com",
			RcptTo: []string{"user@receiver.example"}, ReceivedAt: at,
		},
		HeaderFrom: []string{"example.com"},
		SPF:        &verdict.SPF{Result: res, Domain: "mail.example.com", Identity: "mailfrom"},
		DKIM: []verdict.DKIM{
			{Result: res, Domain: "example.com", Selector: fmt.Sprintf("s%d", i%7), Algorithm: "rsa-sha256"},
			{Result: "pass", Domain: "esp.example", Selector: "esp"},
		},
		DMARC: &verdict.DMARC{
			Result: res, PolicyDomain: "example.com", AuthorDomain: "example.com", DiscoveryMethod: "treewalk",
			Policy:     &verdict.Policy{Domain: "example.com", P: "quarantine", SP: "none", NP: "reject", ADKIM: "r", ASPF: "r", Testing: "n"},
			SPFAligned: pass, DKIMAligned: pass, AppliedPolicy: "p", Disposition: disp,
		},
	}
	if i%11 == 0 {
		v.DMARC.Reasons = []verdict.Reason{{Type: "local_policy", Comment: "allow <list> & co"}}
		v.DMARC.Disposition = "none"
	}
	return v
}

func openTestStore(t testing.TB, now *time.Time) *Store {
	t.Helper()
	s, err := OpenStore(t.TempDir(), func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
