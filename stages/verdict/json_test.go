package verdict

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"
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
		panic("fillValue: no case for " + v.Type().String() + ": teach AppendJSON and this test the new field")
	}
}

func checkVerdictJSON(t *testing.T, v *Verdict) {
	t.Helper()
	want, werr := json.Marshal((*reflectVerdict)(v))
	got, gerr := AppendJSON([]byte("prefix"), v)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("errors differ: reflection %v, AppendJSON %v", werr, gerr)
	}
	if werr != nil {
		return
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], want) {
		t.Fatalf("AppendJSON differs from reflection:\n got %s\nwant %s", got[min(len(got), len("prefix")):], want)
	}
}

var jsonSpecialStrings = []string{
	"", "plain", `quote " backslash \ slash /`, "<script>&amp;</script>", "ctl \x00\x01\b\f\n\r\t\x1f\x7f",
	"utf8 é ü 日本", "bad \xff\xfe utf8 \xc3", "sep \u2028 \u2029", "emoji 😀", string([]byte{0xe2, 0x80}),
	// Escapes after runs of safe text, at every offset modulo 8.
	"mx.example; dkim=pass header.d=example.com\"x1<x12>x123&x1234\\x12345\nx123456\x7fx1234567\xffz",
	"abcdefgh\u2028abcdefghijklmno\x00abcdefg\xc3\xa9abcdefgh",
}

// TestJSONMatchesReflection: every field set, every field empty, and
// strings that need escaping, in every string field.
func TestJSONMatchesReflection(t *testing.T) {
	for n := range 3 {
		for _, s := range jsonSpecialStrings {
			var v Verdict
			fillValue(reflect.ValueOf(&v).Elem(), s, n*7-3, n)
			checkVerdictJSON(t, &v)
		}
	}
	checkVerdictJSON(t, &Verdict{})
	checkVerdictJSON(t, &Verdict{DMARC: &DMARC{Policy: &Policy{}}, ARC: &ARC{}, SPF: &SPF{}, Message: &MessageProblem{}})
	// Times encoding/json refuses: the same error either way.
	checkVerdictJSON(t, &Verdict{EvaluatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})
	checkVerdictJSON(t, &Verdict{Envelope: Envelope{ReceivedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 25*3600))}})
	checkVerdictJSON(t, &Verdict{EvaluatedAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)})
}

// TestJSONTypical: the benchmark corpus's verdict (testdata/typical.json,
// BenchmarkJSON/typical) encodes back to the very octets it was read from.
func TestJSONTypical(t *testing.T) {
	v := corpusVerdict(t)
	checkVerdictJSON(t, v)
	raw, _ := os.ReadFile("testdata/typical.json")
	if got, _ := AppendJSON(nil, v); !bytes.Equal(got, bytes.TrimSpace(raw)) {
		t.Fatalf("typical verdict re-encoded differs:\n got %s\nwant %s", got, raw)
	}
}

// corpusVerdict reads testdata/typical.json.
func corpusVerdict(tb testing.TB) *Verdict {
	tb.Helper()
	var v Verdict
	raw, err := os.ReadFile("testdata/typical.json")
	if err == nil {
		err = json.Unmarshal(raw, (*reflectVerdict)(&v))
	}
	if err != nil {
		tb.Fatal(err)
	}
	return &v
}

func FuzzJSON(f *testing.F) {
	for _, s := range jsonSpecialStrings {
		f.Add(s, s, 1)
	}
	f.Fuzz(func(t *testing.T, a, b string, n int) {
		var v Verdict
		fillValue(reflect.ValueOf(&v).Elem(), a, n, 1)
		v.AuthenticationResults = b
		v.DKIM[0].Reason = b
		checkVerdictJSON(t, &v)
	})
}

// BenchmarkJSON: go test -run '^$' -bench JSON ./stages/verdict/
func BenchmarkJSON(b *testing.B) {
	var v Verdict
	fillValue(reflect.ValueOf(&v).Elem(), "example.com", 1, 1)
	b.Run("reflection", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_, _ = json.Marshal((*reflectVerdict)(&v))
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 4096)
		for range b.N {
			buf, _ = AppendJSON(buf[:0], &v)
		}
	})
	// typical: the verdict of BenchmarkPipelineVsEngine's messages (SPF,
	// one DKIM signature, DMARC pass), whose strings (about 700 octets,
	// the Authentication-Results value 260 of them) are longer than the
	// filled verdict's.
	typical := corpusVerdict(b)
	b.Run("typical", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 4096)
		for range b.N {
			buf, _ = AppendJSON(buf[:0], typical)
		}
		b.SetBytes(int64(len(buf)))
	})
}
