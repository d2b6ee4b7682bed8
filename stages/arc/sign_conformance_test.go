package arc

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/message"
)

type signCase struct {
	ID          string
	Description string `yaml:"description"`
	Message     string `yaml:"message"`
	T           int64  `yaml:"t"`
	SigHeaders  string `yaml:"sig-headers"`
	SrvID       string `yaml:"srv-id"`
	AS          string `yaml:"AS"`
	AMS         string `yaml:"AMS"`
	AAR         string `yaml:"AAR"`
}

type signScenario struct {
	Description string
	Domain      string
	Selector    string
	PrivateKey  string
	Records     map[string]string
	Cases       []signCase
}

func loadSigningSuite(t testing.TB) []signScenario {
	t.Helper()
	path := filepath.Join(suiteDir, "arc-draft-sign-tests.yml")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("conformance suite not found at %s", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var out []signScenario
	for {
		var doc struct {
			Description string            `yaml:"description"`
			Domain      string            `yaml:"domain"`
			Sel         string            `yaml:"sel"`
			PrivateKey  string            `yaml:"privatekey"`
			Tests       yaml.Node         `yaml:"tests"`
			TXT         map[string]string `yaml:"txt-records"`
		}
		if err := dec.Decode(&doc); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		sc := signScenario{Description: strings.TrimSpace(doc.Description), Domain: doc.Domain,
			Selector: doc.Sel, PrivateKey: doc.PrivateKey, Records: doc.TXT}
		for i := 0; i+1 < len(doc.Tests.Content); i += 2 {
			var c signCase
			if err := doc.Tests.Content[i+1].Decode(&c); err != nil {
				t.Fatal(err)
			}
			c.ID = doc.Tests.Content[i].Value
			sc.Cases = append(sc.Cases, c)
		}
		out = append(out, sc)
	}
	return out
}

// tagSet normalises a header value the way the suite harness compares
// them: all white space deleted, split on ';', as a set.
func tagSet(v string) []string {
	v = strings.Join(strings.Fields(v), "")
	var out []string
	for _, p := range strings.Split(v, ";") {
		if p != "" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// fieldValue strips "Name:" from a whole header field.
func fieldValue(f string) string {
	_, v, _ := strings.Cut(f, ":")
	return v
}

func TestValimailSigningSuite(t *testing.T) {
	total, passed := 0, 0
	for _, sc := range loadSigningSuite(t) {
		block, _ := pem.Decode([]byte(sc.PrivateKey))
		if block == nil {
			t.Fatalf("%s: no PEM key", sc.Description)
		}
		key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		res := newSuiteResolver(t, sc.Records, true)
		v := &Validator{Keys: &dkim.KeyFetcher{Resolver: res, Now: suiteClock}, Now: suiteClock}
		for _, c := range sc.Cases {
			total++
			ok := t.Run(c.ID, func(t *testing.T) {
				m, err := message.Parse([]byte(c.Message), message.Limits{})
				if err != nil {
					t.Fatal(err)
				}
				chain := validateString(t, v, c.Message)
				ts := c.T
				s := &Sealer{Domain: sc.Domain, Selector: sc.Selector, Key: key, AuthServID: c.SrvID,
					Headers: strings.Split(c.SigHeaders, ":"), Now: func() time.Time { return time.Unix(ts, 0) }}
				set, err := s.Seal(m, chain, CollectAuthResults(m, c.SrvID))
				if strings.TrimSpace(c.AS) == "" {
					if !errors.Is(err, ErrNoSeal) {
						t.Errorf("want no seal (ErrNoSeal), got %v, %+v", err, set)
					}
					return
				}
				if err != nil {
					t.Fatalf("Seal: %v (chain %s: %s)", err, chain.Result, chain.Reason)
				}
				for _, f := range []struct{ name, got, want string }{
					{"AAR", set.AAR, c.AAR}, {"AMS", set.AMS, c.AMS}, {"AS", set.AS, c.AS},
				} {
					g, w := tagSet(fieldValue(f.got)), tagSet(f.want)
					if strings.Join(g, ";") != strings.Join(w, ";") {
						t.Errorf("%s:\n got  %q\n want %q", f.name, g, w)
					}
				}
				// What was sealed must validate.
				out := validateString(t, v, string(set.Prepend(m.Raw)))
				if chain.Result != ResultFail && out.Result != ResultPass {
					t.Errorf("sealed message does not validate: %s (%s)", out.Result, out.Reason)
				}
			})
			if ok {
				passed++
			}
		}
	}
	t.Logf("ValiMail ARC signing suite: %d/%d cases pass", passed, total)
	if passed < 17 || total != 17 {
		t.Errorf("ValiMail ARC signing suite: %d/%d, want 17/17", passed, total)
	}
}
