package arc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/message"
)

// suiteDir is the ValiMail ARC suite, read in place (see
// shared/conformance/README.md section 2).
const suiteDir = "../../../shared/conformance/arc-valimail"

// suiteClock is a fixed "now" after every t= in the suites (which use
// t=12345-style values and no x=).
var suiteClock = func() time.Time { return time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC) }

type valCase struct {
	ID          string
	Scenario    string
	Spec        string `yaml:"spec"`
	Description string `yaml:"description"`
	Message     string `yaml:"message"`
	CV          string `yaml:"cv"`
	Comment     string `yaml:"comment"`
}

type valScenario struct {
	Description string
	Records     map[string]string
	Cases       []valCase
}

// orderedCases decodes a YAML mapping of id -> case keeping file order.
func orderedCases(n *yaml.Node, scenario string) ([]valCase, error) {
	if n.Kind != yaml.MappingNode {
		return nil, errors.New("tests is not a mapping")
	}
	// The file repeats some ids within one mapping; like the suite's own
	// (Python) harness, the later entry wins, at the first one's place.
	var out []valCase
	pos := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		var c valCase
		if err := n.Content[i+1].Decode(&c); err != nil {
			return nil, err
		}
		c.ID, c.Scenario = n.Content[i].Value, scenario
		if p, dup := pos[c.ID]; dup {
			out[p] = c
			continue
		}
		pos[c.ID] = len(out)
		out = append(out, c)
	}
	return out, nil
}

// loadValidationSuite reads arc-draft-validation-tests.yml, skipping the
// test when the corpus is not checked out beside the repository.
func loadValidationSuite(t testing.TB) []valScenario {
	t.Helper()
	path := filepath.Join(suiteDir, "arc-draft-validation-tests.yml")
	scs, err := readValidationSuite(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("conformance suite not found at %s", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return scs
}

// loadValidationSuiteIfPresent returns the validation suite, or nil when
// it cannot be read (used for fuzz seeds).
func loadValidationSuiteIfPresent() []valScenario {
	scs, _ := readValidationSuite(filepath.Join(suiteDir, "arc-draft-validation-tests.yml"))
	return scs
}

func readValidationSuite(path string) ([]valScenario, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var out []valScenario
	for {
		var doc struct {
			Description string            `yaml:"description"`
			Tests       yaml.Node         `yaml:"tests"`
			TXT         map[string]string `yaml:"txt-records"`
		}
		if err := dec.Decode(&doc); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		cases, err := orderedCases(&doc.Tests, strings.TrimSpace(doc.Description))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, valScenario{Description: strings.TrimSpace(doc.Description), Records: doc.TXT, Cases: cases})
	}
	return out, nil
}

// expectedResult maps the suite's cv to an acceptable set of results. An
// empty cv means "fail or no output" (README section 2).
func expectedResult(cv string) []string {
	switch strings.ToLower(cv) {
	case "pass":
		return []string{ResultPass}
	case "none":
		return []string{ResultNone}
	case "fail", "":
		return []string{ResultFail}
	}
	return nil
}

func TestValimailValidationSuite(t *testing.T) {
	scenarios := loadValidationSuite(t)
	total, passed := 0, 0
	for _, sc := range scenarios {
		res := newSuiteResolver(t, sc.Records, false)
		v := &Validator{Keys: &dkim.KeyFetcher{Resolver: res, Now: suiteClock}, Now: suiteClock}
		for _, c := range sc.Cases {
			total++
			ok := t.Run(c.ID, func(t *testing.T) {
				want := expectedResult(c.CV)
				if want == nil {
					t.Fatalf("unknown expected cv %q", c.CV)
				}
				got := validateString(t, v, c.Message)
				for _, w := range want {
					if got.Result == w {
						return
					}
				}
				t.Errorf("%s (%s): got %s (%s), want %v", c.ID, c.Description, got.Result, got.Reason, want)
			})
			if ok {
				passed++
			}
		}
	}
	t.Logf("ValiMail ARC validation suite: %d/%d cases pass", passed, total)
	if passed < 171 || total != 171 {
		t.Errorf("ValiMail ARC validation suite: %d/%d, want 171/171", passed, total)
	}
}

func validateString(t testing.TB, v *Validator, msg string) Result {
	t.Helper()
	m, err := message.Parse([]byte(msg), message.Limits{})
	if err != nil {
		t.Fatalf("message.Parse: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return v.Validate(ctx, m)
}
