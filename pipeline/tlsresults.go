package pipeline

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
)

// HeaderSource is set on the reporter's dead-letter records: the topic,
// partition and offset the record was read from (topic/partition/offset).
const HeaderSource = "authpipe.source"

// decodeTLSResult decodes one mail.tls-results record and checks that it
// is on the partition its policy domain hashes to (parts is the topic's
// partition count). The reporter that owns that partition builds the
// domain's TLS report, so an event elsewhere would be counted in a store
// that never reports it: producers must key records by the lower-case
// policy domain with Kafka's default (murmur2) partitioner.
func decodeTLSResult(r *kgo.Record, parts int, part func(domain string, n int) int32) (reportgen.TLSResult, error) {
	ev, err := reportgen.ParseTLSResult(r.Value)
	if err != nil {
		return ev, err
	}
	domain := strings.ToLower(ev.PolicyDomain)
	if parts > 0 {
		if want := part(domain, parts); want != r.Partition {
			return ev, fmt.Errorf("pipeline: tls result for %s on partition %d, but the domain hashes to partition %d of %d: "+
				"key records by the lower-case policy domain with the default (murmur2) partitioner", domain, r.Partition, want, parts)
		}
	}
	return ev, nil
}

// deadLetter copies r (key, value, headers, timestamp) to topic with the
// error in an authpipe.error header and the origin in authpipe.source.
func deadLetter(r *kgo.Record, topic string, err error) *kgo.Record {
	hs := slices.Clone(r.Headers)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderError, Value: []byte(err.Error())},
		kgo.RecordHeader{Key: HeaderSource, Value: []byte(r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10))},
	)
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp}
}
