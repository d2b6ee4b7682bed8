package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/authpipe/authpipe/stages/verdict"
)

// fillValue sets every field reachable from v (structs, pointers, slices of
// length n, strings, ints, bools, time.Time) to a non-zero value built from
// s and i, so that no omitempty field is skipped.
func fillValue(v reflect.Value, s string, i int, n int) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(i))
	case reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		v.SetUint(uint64(i))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fillValue(p.Elem(), s, i, n)
		v.Set(p)
	case reflect.Slice:
		sl := reflect.MakeSlice(v.Type(), n, n)
		for j := range n {
			fillValue(sl.Index(j), s, i+j, n)
		}
		v.Set(sl)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Date(2026, 5, 1, 12, 0, 0, i, time.FixedZone("x", 3600*2))))
			return
		}
		for f := range v.NumField() {
			if v.Type().Field(f).IsExported() {
				fillValue(v.Field(f), s, i+f, n)
			}
		}
	default:
		panic("fillValue: no case for " + v.Type().String() + ": teach appendVerdictJSON and this test the new field")
	}
}

func checkVerdictJSON(t *testing.T, v *verdict.Verdict) {
	t.Helper()
	want, werr := json.Marshal(v)
	got, gerr := appendVerdictJSON([]byte("prefix"), v)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("errors differ: json.Marshal %v, appendVerdictJSON %v", werr, gerr)
	}
	if werr != nil {
		return
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], want) {
		t.Fatalf("appendVerdictJSON differs from json.Marshal:\n got %s\nwant %s", got[min(len(got), len("prefix")):], want)
	}
}

var jsonSpecialStrings = []string{
	"", "plain", `quote " backslash \ slash /`, "<script>&amp;</script>", "ctl \x00\x01\b\f\n\r\t\x1f\x7f",
	"utf8 é ü 日本", "bad \xff\xfe utf8 \xc3", "sep \u2028 \u2029", "emoji 😀", string([]byte{0xe2, 0x80}),
}

// TestVerdictJSONMatchesMarshal: every field set, every field empty, and
// strings that need escaping, in every string field.
func TestVerdictJSONMatchesMarshal(t *testing.T) {
	for n := range 3 {
		for _, s := range jsonSpecialStrings {
			var v verdict.Verdict
			fillValue(reflect.ValueOf(&v).Elem(), s, n*7-3, n)
			checkVerdictJSON(t, &v)
		}
	}
	checkVerdictJSON(t, &verdict.Verdict{})
	checkVerdictJSON(t, &verdict.Verdict{DMARC: &verdict.DMARC{Policy: &verdict.Policy{}}, ARC: &verdict.ARC{}, SPF: &verdict.SPF{}, Message: &verdict.MessageProblem{}})
	// Times encoding/json refuses: the same error either way.
	checkVerdictJSON(t, &verdict.Verdict{EvaluatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})
	checkVerdictJSON(t, &verdict.Verdict{Envelope: verdict.Envelope{ReceivedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 25*3600))}})
	checkVerdictJSON(t, &verdict.Verdict{EvaluatedAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)})
}

// TestVerdictJSONEngineVerdicts compares the two on real verdicts.
func TestVerdictJSONEngineVerdicts(t *testing.T) {
	dns := startTestDNS(t)
	e := testEngine(t, dns.Addr)
	for _, m := range corpus(32, "j") {
		v := e.Verify(context.Background(), m.raw, m.env)
		v.Key = m.key
		checkVerdictJSON(t, v)
	}
	for _, m := range signedCorpus(t, dns, 16) {
		v := e.Verify(context.Background(), m.raw, m.env)
		checkVerdictJSON(t, v)
	}
}

func FuzzVerdictJSON(f *testing.F) {
	for _, s := range jsonSpecialStrings {
		f.Add(s, s, 1)
	}
	f.Fuzz(func(t *testing.T, a, b string, n int) {
		var v verdict.Verdict
		fillValue(reflect.ValueOf(&v).Elem(), a, n, 1)
		v.AuthenticationResults = b
		v.DKIM[0].Reason = b
		checkVerdictJSON(t, &v)
	})
}

func BenchmarkVerdictJSON(b *testing.B) {
	dns := startTestDNS(b)
	e := testEngine(b, dns.Addr)
	m := signedCorpus(b, dns, 1)[0]
	v := e.Verify(context.Background(), m.raw, m.env)
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_, _ = json.Marshal(v)
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_, _ = appendVerdictJSON(make([]byte, 0, 1024), v)
		}
	})
}
