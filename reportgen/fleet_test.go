package reportgen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// tlsrptSchema is RFC 8460 4.3 as a JSON Schema: the required members and
// their types (the RFC has no schema of its own).
const tlsrptSchema = `{
  "type": "object",
  "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
  "properties": {
    "organization-name": {"type": "string"},
    "contact-info": {"type": "string"},
    "report-id": {"type": "string", "minLength": 1},
    "date-range": {"type": "object", "required": ["start-datetime", "end-datetime"],
      "properties": {"start-datetime": {"type": "string", "format": "date-time"}, "end-datetime": {"type": "string", "format": "date-time"}}},
    "policies": {"type": "array", "items": {
      "type": "object", "required": ["policy", "summary"],
      "properties": {
        "policy": {"type": "object", "required": ["policy-type", "policy-domain"], "properties": {
          "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
          "policy-string": {"type": "array", "items": {"type": "string"}},
          "policy-domain": {"type": "string"},
          "mx-host": {"type": "array", "items": {"type": "string"}}}},
        "summary": {"type": "object", "required": ["total-successful-session-count", "total-failure-session-count"], "properties": {
          "total-successful-session-count": {"type": "integer", "minimum": 0},
          "total-failure-session-count": {"type": "integer", "minimum": 0}}},
        "failure-details": {"type": "array", "items": {"type": "object", "required": ["result-type", "failed-session-count"], "properties": {
          "result-type": {"type": "string"}, "failed-session-count": {"type": "integer", "minimum": 0}}}}
      }}}
  }
}`

func compileTLSRPTSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(tlsrptSchema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("tlsrpt.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("tlsrpt.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// bigTLSWindow merges, for company-y.example on testDay, three policies:
// sts with 400 distinct failure details (and 1000 successes), tlsa with 60
// details, no-policy-found with successes only. It returns the expected
// (success, failure) counts per policy type.
func bigTLSWindow(t *testing.T, s *Store) map[string][2]uint64 {
	t.Helper()
	a := NewTLSAggregator()
	want := map[string][2]uint64{}
	add := func(ev TLSResult, n int) {
		for range n {
			if err := a.Add(&ev); err != nil {
				t.Fatal(err)
			}
		}
		c := want[ev.PolicyType]
		if ev.Result == "success" {
			c[0] += uint64(n)
		} else {
			c[1] += uint64(n)
		}
		want[ev.PolicyType] = c
	}
	sts := TLSResult{Version: 1, Timestamp: testDay.Add(3 * time.Hour), PolicyDomain: "company-y.example", PolicyType: "sts",
		PolicyStrings: []string{"version: STSv1", "mode: enforce", "mx: *.mail.company-y.example", "max_age: 86400"},
		PolicyMXHosts: []string{"*.mail.company-y.example"}, MXHost: "mx1.mail.company-y.example", SendingIP: "192.0.2.1",
		ReceivingIP: "203.0.113.56", Result: "success"}
	add(sts, 1000)
	for i := range 400 {
		f := sts
		h := sha256.Sum256(fmt.Appendf(nil, "detail %d", i))
		f.Result = []string{"certificate-expired", "starttls-not-supported", "validation-failure"}[i%3]
		f.SendingIP = fmt.Sprintf("198.51.100.%d", i%250)
		f.AdditionalInformation = "https://reports.example/info/" + hex.EncodeToString(h[:])
		add(f, 1+i%4)
	}
	tlsa := TLSResult{Version: 1, Timestamp: testDay.Add(4 * time.Hour), PolicyDomain: "company-y.example", PolicyType: "tlsa",
		PolicyStrings: []string{"3 1 1 0123456789abcdef"}, PolicyMXHosts: []string{"mx2.company-y.example"}, MXHost: "mx2.company-y.example",
		SendingIP: "192.0.2.2", Result: "success"}
	add(tlsa, 30)
	for i := range 60 {
		f := tlsa
		f.Result, f.FailureReasonCode = "dane-required", fmt.Sprintf("code-%03d", i)
		add(f, 2)
	}
	none := TLSResult{Version: 1, Timestamp: testDay.Add(5 * time.Hour), PolicyDomain: "company-y.example", PolicyType: "no-policy-found",
		MXHost: "mx9.company-y.example", SendingIP: "192.0.2.3", Result: "success"}
	add(none, 7)
	if _, err := s.MergeTLS(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
	return want
}

var uniqueIDRE = regexp.MustCompile(`^[A-Za-z0-9]+$`)

// checkTLSParts validates each part (size, schema, own report-id and file
// name) and that together they carry exactly want.
func checkTLSParts(t *testing.T, files []ReportFile, data [][]byte, cap int64, want map[string][2]uint64) {
	t.Helper()
	schema := compileTLSRPTSchema(t)
	got := map[string][2]uint64{}
	ids, names := map[string]bool{}, map[string]bool{}
	for i, rf := range files {
		if cap > 0 && int64(len(data[i])) > cap {
			t.Fatalf("part %d: %d octets over the %d cap", rf.Part, len(data[i]), cap)
		}
		if rf.Size != int64(len(data[i])) {
			t.Fatalf("part %d: size %d, wrote %d", rf.Part, rf.Size, len(data[i]))
		}
		doc := gunzip(t, data[i])
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
		if err != nil {
			t.Fatalf("part %d not JSON: %v", rf.Part, err)
		}
		if err := schema.Validate(inst); err != nil {
			t.Fatalf("part %d: %v", rf.Part, err)
		}
		var rep TLSReport
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatal(err)
		}
		if rep.ReportID != rf.ReportID || len(rep.Policies) == 0 {
			t.Fatalf("part %d: report-id %q (file says %q), %d policies", rf.Part, rep.ReportID, rf.ReportID, len(rep.Policies))
		}
		if rep.DateRange.Start != testDay || rep.DateRange.End != testDay.Add(86399*time.Second) {
			t.Fatalf("part %d: date range %+v", rf.Part, rep.DateRange)
		}
		uid := strings.TrimSuffix(rf.FileName[strings.LastIndexByte(rf.FileName, '!')+1:], ".json.gz")
		if !uniqueIDRE.MatchString(uid) || !strings.HasPrefix(rf.FileName, "receiver.example!company-y.example!") {
			t.Fatalf("file name %q", rf.FileName)
		}
		ids[rep.ReportID], names[rf.FileName] = true, true
		var sessions uint64
		for _, p := range rep.Policies {
			var fails uint64
			for _, fd := range p.FailureDetails {
				fails += fd.FailedSessionCount
			}
			if fails != p.Summary.TotalFailureSessionCount {
				t.Fatalf("part %d policy %s: details sum %d, summary %d", rf.Part, p.Policy.PolicyType, fails, p.Summary.TotalFailureSessionCount)
			}
			c := got[p.Policy.PolicyType]
			c[0] += p.Summary.TotalSuccessfulSessionCount
			c[1] += p.Summary.TotalFailureSessionCount
			got[p.Policy.PolicyType] = c
			sessions += p.Summary.TotalSuccessfulSessionCount + p.Summary.TotalFailureSessionCount
		}
		if sessions != rf.Messages {
			t.Fatalf("part %d: %d sessions, ReportFile says %d", rf.Part, sessions, rf.Messages)
		}
	}
	if len(ids) != len(files) || len(names) != len(files) {
		t.Fatalf("%d parts, %d report-ids, %d file names", len(files), len(ids), len(names))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
}

func buildTLSParts(t *testing.T, s *Store, cap int64) ([]ReportFile, [][]byte, error) {
	var bufs []*bytes.Buffer
	cfg := TLSReportConfig{OrganizationName: "Receiver Org", ContactInfo: "tlsrpt@receiver.example", Sender: "receiver.example"}
	files, err := BuildTLSRPTParts(s, Window{"company-y.example", DayOf(testDay)}, cfg, cap, func(ReportFile) (io.Writer, error) {
		bufs = append(bufs, &bytes.Buffer{})
		return bufs[len(bufs)-1], nil
	})
	data := make([][]byte, len(bufs))
	for i, b := range bufs {
		data[i] = b.Bytes()
	}
	return files, data, err
}

// TestTLSRPTSplit: a TLS report over the cap is split into valid RFC 8460
// reports under the cap that together carry every policy and count, with
// distinct stable report-ids and file names; the large sts policy is
// itself divided by failure details.
func TestTLSRPTSplit(t *testing.T) {
	now := testDay.Add(26 * time.Hour)
	s := openTestStore(t, &now)
	want := bigTLSWindow(t, s)

	whole, wholeData, err := buildTLSParts(t, s, 0)
	if err != nil || len(whole) != 1 {
		t.Fatalf("uncapped: %v, %d parts", err, len(whole))
	}
	checkTLSParts(t, whole, wholeData, 0, want)
	if whole[0].ReportID != TLSReportID("receiver.example", whole[0].Window) || whole[0].FileName != TLSFileName("receiver.example", whole[0].Window) {
		t.Fatalf("unsplit report renamed: %+v", whole[0])
	}

	const cap = 6000
	files, data, err := buildTLSParts(t, s, cap)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("%d parts for a %d octet report under a %d cap", len(files), len(wholeData[0]), cap)
	}
	checkTLSParts(t, files, data, cap, want)
	stsParts := 0
	for _, d := range data {
		if bytes.Contains(gunzip(t, d), []byte(`"policy-type":"sts"`)) {
			stsParts++
		}
	}
	if stsParts < 2 {
		t.Fatalf("the sts policy (over the cap alone) is in %d parts", stsParts)
	}
	if files[0].ReportID != whole[0].ReportID || files[0].FileName != whole[0].FileName {
		t.Fatalf("part 1 must keep the window's report-id and file name: %s %s", files[0].ReportID, files[0].FileName)
	}
	// A rebuild gives the same files, byte for byte.
	again, againData, err := buildTLSParts(t, s, cap)
	if err != nil || len(again) != len(files) {
		t.Fatalf("rebuild: %v %d", err, len(again))
	}
	for i := range files {
		if again[i].FileName != files[i].FileName || !bytes.Equal(againData[i], data[i]) {
			t.Fatalf("rebuild of part %d differs", i+1)
		}
	}
	// A cap no failure detail fits in is an error, not a silent drop.
	if _, _, err := buildTLSParts(t, s, 700); err == nil {
		t.Fatal("a cap smaller than one failure detail was accepted")
	}
	t.Logf("%d octets unsplit → %d parts under %d octets (sts policy in %d parts), every count present", len(wholeData[0]), len(files), cap, stsParts)
}

// TestTLSRPTSplitDelivery: through the reporter, a TLS window over the
// mail cap of its mailto: destination and the body cap of its https:
// destination is delivered as several reports to each, all carrying every
// count.
func TestTLSRPTSplitDelivery(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.MaxHTTPSize = 7000
	f.rep.Caps = map[string]int64{"company-y.example": 30000}
	// Replace the fixture's small TLS window with the big one.
	if err := f.store.DeleteWindow(KindTLS, Window{"company-y.example", DayOf(testDay)}); err != nil {
		t.Fatal(err)
	}
	want := bigTLSWindow(t, f.store)
	f.now = testDay.Add(26 * time.Hour)
	_, ds, err := f.rep.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var files []ReportFile
	var data [][]byte
	for _, m := range f.sink.messages() {
		if m.To != "tls@company-y.example" {
			continue
		}
		if len(m.Data) > 30000 {
			t.Fatalf("TLS report mail of %d octets over the 30000 cap", len(m.Data))
		}
		names, bs := m.attachments(t)
		for i, b := range bs {
			id := strings.TrimSuffix(names[i][strings.LastIndexByte(names[i], '!')+1:], ".json.gz")
			files = append(files, ReportFile{Part: len(files) + 1, FileName: names[i], Size: int64(len(b)), Messages: sessionsOf(t, b),
				ReportID: DayString(DayOf(testDay)) + "_company-y.example_" + id + "@receiver.example"})
			data = append(data, b)
		}
	}
	if len(files) < 2 {
		t.Fatalf("mailto: %d TLS reports (%+v)", len(files), ds)
	}
	checkTLSParts(t, files, data, MailFileCap(30000), want)
	var posts []ReportFile
	var postData [][]byte
	for len(f.postBody) > 0 {
		b := <-f.postBody
		var rep TLSReport
		if err := json.Unmarshal(gunzip(t, b), &rep); err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSuffix(strings.TrimPrefix(rep.ReportID, DayString(DayOf(testDay))+"_company-y.example_"), "@receiver.example")
		posts = append(posts, ReportFile{Part: len(posts) + 1, ReportID: rep.ReportID, Size: int64(len(b)), Messages: sessionsOf(t, b),
			FileName: "receiver.example!company-y.example!begin!end!" + id + ".json.gz"})
		postData = append(postData, b)
	}
	if len(posts) <= len(files) {
		t.Fatalf("https: %d posts for a 7000 octet body cap (mail: %d parts)", len(posts), len(files))
	}
	checkTLSParts(t, posts, postData, 7000, want)
	t.Logf("TLS report split into %d mails under 30000 octets and %d POSTs under 7000 octets", len(files), len(posts))
}

func sessionsOf(t *testing.T, gz []byte) uint64 {
	var rep TLSReport
	if err := json.Unmarshal(gunzip(t, gz), &rep); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, p := range rep.Policies {
		n += p.Summary.TotalSuccessfulSessionCount + p.Summary.TotalFailureSessionCount
	}
	return n
}

// TestRateLimitPersisted: the per-destination rate limit is kept in the
// store, so a new Reporter on the same store (a restart) does not send to a
// destination again before RateInterval has passed.
func TestRateLimitPersisted(t *testing.T) {
	f := newFixture(t)
	f.rep.RateInterval = time.Hour
	// A second day for example.com: two reports for each DMARC destination.
	a := NewAggregator()
	for i := range 50 {
		a.Add(mkVerdict(i, testDay.Add(30*time.Hour)))
	}
	if _, err := f.store.Merge(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
	f.now = testDay.Add(50 * time.Hour)
	_, ds, err := f.rep.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Per DMARC destination one of two reports is sent, one waits.
	if ds.RateLimited != 2 || countTo(f.sink.messages(), "dmarc@example.com") != 1 {
		t.Fatalf("first tick: %+v, %d mails to dmarc@example.com", ds, countTo(f.sink.messages(), "dmarc@example.com"))
	}
	last, err := f.store.LastSend("MAILTO:dmarc@example.com")
	if err != nil || !last.Equal(f.now) {
		t.Fatalf("last send %v %v", last, err)
	}
	// Restart: a fresh Reporter, same store, a minute later.
	r2 := *f.rep
	f.now = f.now.Add(time.Minute)
	if _, ds, err = r2.Tick(context.Background()); err != nil || ds.Sent != 0 || ds.RateLimited != 2 {
		t.Fatalf("after restart: %v %+v", err, ds)
	}
	f.now = f.now.Add(time.Hour)
	r3 := *f.rep
	if _, ds, err = r3.Tick(context.Background()); err != nil || ds.Sent != 2 || ds.RateLimited != 0 {
		t.Fatalf("after the interval: %v %+v", err, ds)
	}
	if n := countTo(f.sink.messages(), "dmarc@example.com"); n != 2 {
		t.Fatalf("%d mails to dmarc@example.com", n)
	}
}

func countTo(msgs []sinkMsg, to string) int {
	n := 0
	for _, m := range msgs {
		if m.To == to {
			n++
		}
	}
	return n
}

// TestStateEvents: the reporter emits built/sent events; another store
// applying them marks the window done (replayed partials count as late,
// never re-open it) and finishes its own copy of a sent item without
// sending; events round-trip through key and value; bad records are errors.
func TestStateEvents(t *testing.T) {
	f := newFixture(t)
	var evs []StateEvent
	f.rep.OnState = func(ev StateEvent) { evs = append(evs, ev) }
	f.now = testDay.Add(26 * time.Hour)
	if _, _, err := f.rep.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	built, sent := 0, 0
	for _, ev := range evs {
		switch {
		case ev.Item == "" && ev.State == StateBuilt:
			built++
			if len(ev.Files) == 0 || len(ev.ReportIDs) != len(ev.Files) || len(ev.Items) != 2 || len(ev.Dests) != 2 {
				t.Fatalf("built event %+v", ev)
			}
		case ev.State == ItemSent:
			sent++
		}
		v, err := ev.Value()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseStateEvent(ev.Key(), v)
		if err != nil || back.Key() == nil || string(back.Key()) != string(ev.Key()) || back.State != ev.State || !back.At.Equal(ev.At) ||
			fmt.Sprint(back.Items, back.Dests) != fmt.Sprint(ev.Items, ev.Dests) {
			t.Fatalf("round trip %+v → %+v %v", ev, back, err)
		}
	}
	if built != 2 || sent != 4 {
		t.Fatalf("%d built, %d sent events: %+v", built, sent, evs)
	}
	// The store keeps done markers; a replayed partial is late.
	w := Window{"example.com", DayOf(testDay)}
	if wi, _ := f.store.WindowInfo(KindDMARC, w); wi == nil || wi.State != StateDone || wi.Remote {
		t.Fatalf("marker %+v", wi)
	}
	a := NewAggregator()
	a.Add(mkVerdict(1, testDay.Add(time.Hour)))
	if res, err := f.store.Merge(a.Flush(), nil); err != nil || res.Late != 1 || res.LatePartials != 1 || len(res.LateWindows) != 1 {
		t.Fatalf("replayed partial: %v %+v", err, res)
	}
	if wins, _ := f.store.Windows(KindDMARC); len(wins) != 0 {
		t.Fatalf("done window listed as live: %+v", wins)
	}

	// A second store with an open copy of the window: the built event
	// makes it built-remote (rows kept, partials still merged, not late);
	// the item events, here before and after it, make it a done marker.
	now2 := f.now
	s2 := openTestStore(t, &now2)
	fillStore(t, s2, 100)
	var dmarcBuilt StateEvent
	var dmarcItems []StateEvent
	for _, ev := range evs {
		switch {
		case ev.Kind != KindDMARC:
		case ev.Item == "":
			dmarcBuilt = ev
		default:
			dmarcItems = append(dmarcItems, ev)
		}
	}
	if changed, err := s2.ApplyState(dmarcItems[0]); err != nil || !changed {
		t.Fatalf("apply %+v: %v %v", dmarcItems[0], changed, err)
	}
	if changed, err := s2.ApplyState(dmarcBuilt); err != nil || !changed {
		t.Fatalf("apply %+v: %v %v", dmarcBuilt, changed, err)
	}
	if changed, err := s2.ApplyState(dmarcBuilt); err != nil || changed {
		t.Fatalf("apply again %+v: %v %v", dmarcBuilt, changed, err)
	}
	wi, _ := s2.WindowInfo(KindDMARC, w)
	if wi == nil || wi.State != StateBuiltRemote || !wi.Remote || wi.Rows == 0 || len(wi.Reports) != 2 || !wi.BuiltAt.Equal(dmarcBuilt.At) {
		t.Fatalf("applied built: %+v", wi)
	}
	a.Add(mkVerdict(1, testDay.Add(time.Hour)))
	if res, err := s2.Merge(a.Flush(), nil); err != nil || res.LatePartials != 0 || res.Rows == 0 {
		t.Fatalf("partial for a built-remote window: %v %+v", err, res)
	}
	if wi2, _ := s2.WindowInfo(KindDMARC, w); wi2.Messages != wi.Messages+1 {
		t.Fatalf("merged into the built-remote window: %d messages, was %d", wi2.Messages, wi.Messages)
	}
	for _, ev := range dmarcItems[1:] {
		if changed, err := s2.ApplyState(ev); err != nil || !changed {
			t.Fatalf("apply %+v: %v %v", ev, changed, err)
		}
	}
	wi, _ = s2.WindowInfo(KindDMARC, w)
	if wi == nil || wi.State != StateDone || !wi.Remote || wi.Rows != 0 {
		t.Fatalf("all items final: %+v", wi)
	}
	a.Add(mkVerdict(1, testDay.Add(time.Hour)))
	if res, err := s2.Merge(a.Flush(), nil); err != nil || res.LatePartials != 1 {
		t.Fatalf("partial for the done window: %v %+v", err, res)
	}
	// Applying the same events again (or one's own) changes nothing.
	for _, ev := range evs {
		if changed, err := f.store.ApplyState(ev); err != nil || changed {
			t.Fatalf("own event %+v: %v %v", ev, changed, err)
		}
	}
	// Item state: a pending copy is finished without a send.
	items, _ := f.store.OutboxItems(true)
	var it OutboxItem
	for _, x := range items {
		if x.Kind == KindDMARC && x.Dest == "mailto:dmarc@example.com" {
			it = x
		}
	}
	it.State, it.SentAt = ItemPending, time.Time{}
	s3 := openTestStore(t, &now2)
	fillStore(t, s3, 10)
	s3.CloseWindow(KindDMARC, w)
	if ok, err := s3.enqueue(KindDMARC, w, []OutboxItem{it}, nil, now2); err != nil || !ok {
		t.Fatal(ok, err)
	}
	var itemEv StateEvent
	for _, ev := range evs {
		if ev.Item == it.ID {
			itemEv = ev
		}
	}
	if changed, err := s3.ApplyState(itemEv); err != nil || !changed {
		t.Fatalf("item event: %v %v", changed, err)
	}
	got, _ := s3.OutboxItems(false)
	if got[0].State != ItemSent || !got[0].Remote {
		t.Fatalf("item %+v", got[0])
	}
	if wi, _ := s3.WindowInfo(KindDMARC, w); wi.State != StateDone || wi.Remote {
		t.Fatalf("window of the finished item: %+v", wi)
	}
	// Snapshot: what f.store built and sent, for republishing.
	snap, err := f.store.StateSnapshot()
	if err != nil || len(snap) != len(evs) {
		t.Fatalf("snapshot: %v, %d events, emitted %d", err, len(snap), len(evs))
	}
	// Markers are pruned after the TTL, with tombstone events.
	evs = nil
	f.now = f.now.Add(DefaultMarkerTTL + time.Hour)
	if err := f.rep.Prune(); err != nil {
		t.Fatal(err)
	}
	if done, _ := f.store.DoneWindows(KindDMARC); len(done) != 0 || len(evs) == 0 || evs[0].State != StatePruned {
		t.Fatalf("prune: %d markers left, events %+v", len(done), evs)
	}
	if v, _ := evs[0].Value(); v != nil {
		t.Fatal("tombstone with a value")
	}
	for _, bad := range [][2]string{
		{"dmarc/example.com", `{"state":"built"}`},
		{"smime/example.com/2026-11-20", `{"state":"built"}`},
		{"dmarc/Example.com/2026-11-20", `{"state":"built"}`},
		{"dmarc/example.com/2026-13-20", `{"state":"built"}`},
		{"dmarc/example.com/2026-11-20/zz", `{"state":"sent"}`},
		{"dmarc/example.com/2026-11-20", `{"state":"sent"}`},
		{"dmarc/example.com/2026-11-20", `{"state":`},
		{"dmarc/example.com/2026-11-20", `{"state":"built","items":["zz"],"dests":[{"uri":"mailto:a@b.example"}]}`},
		{"dmarc/example.com/2026-11-20", `{"state":"built","items":["` + strings.Repeat("ab", 16) + `"],"dests":[{"uri":"https://b.example/r"}]}`},
		{"dmarc/example.com/2026-11-20", `{"state":"built","items":["` + strings.Repeat("ab", 16) + `"],"dests":[{"uri":"mailto:nobody"}]}`},
		{"dmarc/example.com/2026-11-20/" + strings.Repeat("ab", 16), `{"state":"sent","items":["` + strings.Repeat("ab", 16) + `"]}`},
	} {
		if _, err := ParseStateEvent([]byte(bad[0]), []byte(bad[1])); err == nil {
			t.Errorf("accepted %q = %s", bad[0], bad[1])
		}
	}
}

// TestCloseDueIf: only the windows the filter accepts are closed; a
// partial for a window closed elsewhere stays mergeable here until this
// reporter owns it.
func TestCloseDueIf(t *testing.T) {
	now := testDay.Add(30 * time.Hour)
	s := openTestStore(t, &now)
	for _, d := range []string{"a.example", "b.example"} {
		v := mkVerdict(1, testDay.Add(time.Hour))
		v.DMARC.PolicyDomain = d
		a := NewAggregator()
		a.Add(v)
		if _, err := s.Merge(a.Flush(), nil); err != nil {
			t.Fatal(err)
		}
	}
	closed, err := s.CloseDueIf(func(_ Kind, w Window) bool { return w.Domain == "a.example" })
	if err != nil || len(closed) != 1 || closed[0].Domain != "a.example" {
		t.Fatalf("%v %+v", err, closed)
	}
	wi, _ := s.WindowInfo(KindDMARC, Window{"b.example", DayOf(testDay)})
	if wi.State != StateOpen {
		t.Fatalf("unowned window closed: %+v", wi)
	}
}

// TestTakeoverAfterLostStore: reporter A builds the example.com DMARC and
// company-y.example TLS windows, sends one item, has a second accepted but
// dies before marking it, and loses its store. Reporter B applied A's
// state events (built, one item sent) and holds the same rows (it consumed
// the same partitions). B keeps the windows built-remote, merges a
// partial that arrives meanwhile, and only once it owns them and
// TakeoverAfter has passed since A's build rebuilds them: same item ids,
// file names and Report-IDs as A's (the TLS file byte for byte), the item
// A marked sent not sent again, the rest (the accepted one included:
// at-least-once) delivered by B.
func TestTakeoverAfterLostStore(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var evsA []StateEvent
	f.rep.OnState = func(ev StateEvent) { evsA = append(evsA, ev) }
	accepted := 0
	var acceptedNotMarked OutboxItem
	f.rep.AfterAccept = func(it OutboxItem) error {
		if accepted++; accepted == 2 {
			acceptedNotMarked = it
			return errors.New("killed")
		}
		return nil
	}
	// B's store: the same partials.
	sB := openTestStore(t, &f.now)
	fillStore(t, sB, 2000)
	ta := NewTLSAggregator()
	for _, ev := range tlsEvents() {
		ta.Add(&ev)
	}
	if _, err := sB.MergeTLS(ta.Flush(), nil); err != nil {
		t.Fatal(err)
	}

	f.now = testDay.Add(26 * time.Hour)
	builtAt := f.now
	if _, _, err := f.rep.Tick(ctx); err == nil || accepted != 2 {
		t.Fatalf("A's tick: %v, %d accepted", err, accepted)
	}
	itemsA, err := f.store.OutboxItems(true)
	if err != nil || len(itemsA) != 4 {
		t.Fatalf("A's outbox: %v, %d items", err, len(itemsA))
	}
	byID := map[string]OutboxItem{}
	var sentByA OutboxItem
	for _, it := range itemsA {
		byID[it.ID] = it
		if it.State == ItemSent {
			sentByA = it
		}
	}
	if sentByA.ID == "" || acceptedNotMarked.ID == "" {
		t.Fatal("A sent nothing")
	}
	f.store.Close() // A's store is lost

	for _, ev := range evsA {
		if _, err := sB.ApplyState(ev); err != nil {
			t.Fatal(err)
		}
	}
	for _, kw := range []kindWindow{{KindDMARC, Window{"example.com", DayOf(testDay)}}, {KindTLS, Window{"company-y.example", DayOf(testDay)}}} {
		wi, _ := sB.WindowInfo(kw.kind, kw.w)
		if wi == nil || wi.State != StateBuiltRemote || wi.Rows == 0 || len(wi.Reports) != 2 || len(wi.Dests) != 2 {
			t.Fatalf("B's %s window after A's events: %+v", kw.kind, wi)
		}
	}
	var evsB []StateEvent
	rB := *f.rep
	rB.Store, rB.AfterAccept, rB.OnState = sB, nil, func(ev StateEvent) { evsB = append(evsB, ev) }
	mailsBefore, postsBefore := len(f.sink.messages()), f.posts.Load()
	tick := func(what string, wantTakeovers, wantSent int) {
		t.Helper()
		bs, ds, err := rB.Tick(ctx)
		if err != nil || bs.TakenOver != wantTakeovers || ds.Sent != wantSent {
			t.Fatalf("%s: %v %+v %+v", what, err, bs, ds)
		}
	}
	tick("B at A's build time", 0, 0)
	// A partial merged into the built-remote window is in B's rebuild.
	a := NewAggregator()
	a.Add(mkVerdict(7, testDay.Add(2*time.Hour)))
	if res, err := sB.Merge(a.Flush(), nil); err != nil || res.LatePartials != 0 {
		t.Fatalf("merge into built-remote: %v %+v", err, res)
	}
	f.now = builtAt.Add(59 * time.Minute)
	tick("B before TakeoverAfter", 0, 0)
	f.now = builtAt.Add(61 * time.Minute)
	rB.Owns = func(Kind, Window) bool { return false }
	tick("B not owning the windows", 0, 0)
	if len(f.sink.messages()) != mailsBefore || f.posts.Load() != postsBefore {
		t.Fatal("B sent before taking over")
	}
	rB.Owns = nil
	tick("B takes over", 2, 3)

	// B's outbox: A's items (same ids, names, Report-IDs), A's sent one
	// finished remotely.
	itemsB, _ := sB.OutboxItems(true)
	if len(itemsB) != 4 {
		t.Fatalf("B's outbox: %d items", len(itemsB))
	}
	for _, it := range itemsB {
		ia, ok := byID[it.ID]
		if !ok || ia.Meta.FileName != it.Meta.FileName || ia.Meta.ReportID != it.Meta.ReportID || ia.Dest != it.Dest {
			t.Fatalf("B's item %+v is not one of A's", it.Meta)
		}
		if it.Kind == KindTLS && !bytes.Equal(it.File, ia.File) {
			t.Fatalf("rebuilt TLS file %s differs from A's", it.Meta.FileName)
		}
		if it.State != ItemSent || it.Remote != (it.ID == sentByA.ID) {
			t.Fatalf("B's item %s: %s remote=%v (A sent %s)", it.Meta.FileName, it.State, it.Remote, sentByA.ID)
		}
	}
	var builtB int
	for _, ev := range evsB {
		if ev.Item == "" {
			builtB++
			var want []string
			for _, ea := range evsA {
				if ea.Item == "" && ea.Kind == ev.Kind {
					want = ea.Items
				}
			}
			if fmt.Sprint(ev.Items) != fmt.Sprint(want) {
				t.Fatalf("B's built event items %v, A's %v", ev.Items, want)
			}
		} else if ev.Item == sentByA.ID {
			t.Fatal("B emitted a state for the item A sent")
		}
	}
	if builtB != 2 {
		t.Fatalf("%d built events from B", builtB)
	}

	// What the receivers got from B: the three items A did not mark, the
	// DMARC report with the merged partial.
	dests := map[string]int{}
	for _, m := range f.sink.messages()[mailsBefore:] {
		pm := f.parse(t, m)
		dests["mailto:"+m.To]++
		var ia OutboxItem
		for _, x := range itemsA {
			if x.Meta.FileName == pm.FileName && strings.EqualFold(x.Dest, "mailto:"+m.To) {
				ia = x
			}
		}
		if ia.ID == "" || !strings.Contains(pm.Subject, ia.Meta.ReportID) {
			t.Fatalf("B's mail to %s: %s, %q is not A's", m.To, pm.FileName, pm.Subject)
		}
		if ia.Kind == KindDMARC {
			var n uint64
			for _, c := range regexp.MustCompile(`<count>(\d+)</count>`).FindAllSubmatch(gunzip(t, pm.File), -1) {
				v, _ := strconv.ParseUint(string(c[1]), 10, 64)
				n += v
			}
			if n != 2001 {
				t.Fatalf("B's DMARC report counts %d messages, want 2001", n)
			}
		}
	}
	if posts := f.posts.Load() - postsBefore; posts > 0 {
		dests[itemsA[slices.IndexFunc(itemsA, func(it OutboxItem) bool { return strings.HasPrefix(it.Dest, "https:") })].Dest] += int(posts)
	}
	if dests[sentByA.Dest] != 0 || len(dests) != 3 || dests[acceptedNotMarked.Dest] != 1 {
		t.Fatalf("B delivered to %v; A had sent to %s", dests, sentByA.Dest)
	}
	// Done here now; a replayed partial is late.
	if wins, _ := sB.Windows(KindDMARC); len(wins) != 0 {
		t.Fatalf("B's live windows after delivery: %+v", wins)
	}
	a.Add(mkVerdict(8, testDay.Add(2*time.Hour)))
	if res, err := sB.Merge(a.Flush(), nil); err != nil || res.LatePartials != 1 {
		t.Fatalf("replay after the takeover: %v %+v", err, res)
	}
	t.Logf("A sent %s and died; B took over after TakeoverAfter and delivered %v with A's Report-IDs and file names", sentByA.Dest, dests)
}
