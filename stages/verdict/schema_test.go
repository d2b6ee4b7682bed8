package verdict

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/authpipe/authpipe/internal/schematest"
)

func TestSampleValidatesAgainstSchema(t *testing.T) {
	s := schematest.Compile(t, "verdict.schema.json")
	v := sample()
	v.AuthenticationResults = AuthenticationResults("id", v)
	b, _ := json.Marshal(v)
	schematest.Validate(t, s, b)
}

// TestSchemaCoversStruct keeps the Go types and the documented schema in
// step: every JSON field of Verdict (recursively) must be a property in the
// schema at the same place, and the other way round.
func TestSchemaCoversStruct(t *testing.T) {
	raw, err := os.ReadFile(schematest.DocsPath("verdict.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	compare(t, "verdict", reflect.TypeOf(Verdict{}), schema)
}

func compare(t *testing.T, path string, typ reflect.Type, node map[string]any) {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
		if items, ok := node["items"].(map[string]any); ok {
			node = items
		}
	}
	if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeOf(Verdict{}).PkgPath() {
		return
	}
	props, _ := node["properties"].(map[string]any)
	seen := map[string]bool{}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		seen[name] = true
		sub, ok := props[name].(map[string]any)
		if !ok {
			t.Errorf("%s.%s: in the Go type, not in docs/verdict.schema.json", path, name)
			continue
		}
		compare(t, path+"."+name, f.Type, sub)
	}
	for name := range props {
		if !seen[name] {
			t.Errorf("%s.%s: in the schema, not in the Go type", path, name)
		}
	}
}
