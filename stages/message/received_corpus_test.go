package message

import (
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// confDir holds the independent test corpora (../shared/conformance, beside
// the checkout); the Received fields of their messages are real MTAs'.
const confDir = "../../../shared/conformance"

// receivedLiteral finds the address literal of a From clause's TCP-info
// the way a reader of RFC 5321 4.4 would, independently of ParseReceived:
// the first "[address]" after "from" and before " by ".
var receivedLiteral = regexp.MustCompile(`(?i)^\s*from\s.*?\[(?:ipv6:)?([0-9a-f:.]+)\].*?\sby\s`)

// TestParseReceivedConformance reads every Received field of the messages in
// the conformance corpora (DKIM, ARC, DMARC report and rspamd messages,
// as real MTAs wrote them) and checks that ParseReceived finds the client
// address wherever the field's From clause has an address literal, and
// reports how many fields it read a client from.
func TestParseReceivedConformance(t *testing.T) {
	if _, err := os.Stat(confDir); err != nil {
		t.Skipf("conformance corpora not present: %v", err)
	}
	fields, literal, withClient, agree := 0, 0, 0, 0
	err := filepath.WalkDir(confDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(path, "/specs/") || strings.Contains(path, "/schemas/") {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil || len(raw) > 1<<20 {
			return err
		}
		m, err := Parse(raw, Limits{})
		if err != nil {
			return nil // not a message
		}
		for _, f := range m.Trace().Received {
			fields++
			r, err := ParseReceived(f.Value)
			if err == nil && r.ClientIP.IsValid() {
				withClient++
			}
			sub := receivedLiteral.FindSubmatch(f.Value)
			if sub == nil {
				continue
			}
			want, err := netip.ParseAddr(string(sub[1]))
			if err != nil {
				continue
			}
			literal++
			if r.ClientIP == want.Unmap() {
				agree++
			} else {
				t.Errorf("%s: %q: client %v, want %v", path, f.Value, r.ClientIP, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fields == 0 {
		t.Fatal("no Received fields found in the corpora")
	}
	t.Logf("Received fields in the corpora: %d; a client address read from %d; %d/%d with an address literal agree", fields, withClient, agree, literal)
}
