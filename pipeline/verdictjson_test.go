package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/authpipe/authpipe/stages/verdict"
)

// reflectVerdict is verdict.Verdict without its MarshalJSON method, so
// encoding/json marshals it by reflection.
type reflectVerdict verdict.Verdict

// TestVerdictJSONEngineVerdicts: on real verdicts from the engine (the
// corpus of the pipeline tests), verdict.AppendJSON, which the pipeline
// writes to mail.verdicts, equals encoding/json's reflection output.
func TestVerdictJSONEngineVerdicts(t *testing.T) {
	dns := startTestDNS(t)
	e := testEngine(t, dns.Addr)
	check := func(v *verdict.Verdict) {
		t.Helper()
		want, err := json.Marshal((*reflectVerdict)(v))
		if err != nil {
			t.Fatal(err)
		}
		got, err := verdict.AppendJSON(nil, v)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("AppendJSON differs (%v):\n got %s\nwant %s", err, got, want)
		}
	}
	for _, m := range corpus(32, "j") {
		v := e.Verify(context.Background(), m.raw, m.env)
		v.Key = m.key
		check(v)
	}
	for _, m := range signedCorpus(t, dns, 16) {
		check(e.Verify(context.Background(), m.raw, m.env))
	}
}
