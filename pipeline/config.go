package pipeline

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
)

// Delivery is the delivery guarantee of a Pipeline.
type Delivery string

const (
	// ExactlyOnce consumes and produces inside Kafka transactions
	// (KIP-98, KIP-447): the verdicts of a batch and the batch's input
	// offsets commit together or not at all. A read_committed consumer of
	// mail.verdicts sees each verdict once, across crashes and rebalances.
	// It costs a transaction per batch (a few broker round trips) and
	// consumers of mail.verdicts must use read_committed.
	ExactlyOnce Delivery = "exactly-once"
	// AtLeastOnce produces verdicts idempotently, waits until they are
	// acknowledged, then commits the input offsets. After a crash the
	// unfinished batch is verified again, so a verdict may appear twice
	// (same key, same content up to evaluated_at); none is lost. Faster:
	// no transaction markers, and consumers need not use read_committed.
	AtLeastOnce Delivery = "at-least-once"
)

// Config configures a Pipeline. The zero value of every field means its
// default (see Defaults); docs/configuration.md documents each one.
type Config struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// InputTopic is the topic of raw messages (default mail.raw).
	InputTopic string
	// VerdictTopic receives one JSON verdict per message (default mail.verdicts).
	VerdictTopic string
	// DLQTopic receives records that cannot be decoded (default mail.raw.dlq).
	DLQTopic string
	// AggregateTopic receives the partial DMARC aggregates of each batch
	// (reportgen.PartialAggregate, key = policy domain), written with the
	// verdicts (default authpipe.aggregates).
	AggregateTopic string
	// Group is the consumer group (default authpipe-verify).
	Group string
	// Partitions is the partition count used when a missing topic is
	// created (default 12). Existing topics are left as they are.
	Partitions int32
	// ReplicationFactor for created topics; -1 = broker default (default -1).
	ReplicationFactor int16
	// SkipCreateTopics turns off the creation of missing topics at start
	// (kadm CreateTopics; existing topics are never changed).
	SkipCreateTopics bool

	// Delivery is ExactlyOnce (default) or AtLeastOnce.
	Delivery Delivery
	// TransactionalID identifies this instance's transactional producer.
	// It must be stable across restarts of one instance (so a restart fences
	// and aborts the crashed instance's open transaction at once) and
	// distinct between instances: a producer that starts with the ID of a
	// running one fences it, and the older one stops. Empty (the default):
	// Run claims Group + "-" + hostname ("authpipe-verify-HOST" with the
	// default group), or with other instances of the group on this host
	// running, the first free of Group + "-" + hostname + "-2", "-3", …
	// (claimTransactionalID, in InstanceLockDir), so that neither pipelines
	// of different groups nor instances of one group on one host fence each
	// other.
	TransactionalID string
	// InstanceLockDir holds the files through which exactly-once
	// instances on this host claim their default transactional IDs
	// (default os.TempDir()).
	InstanceLockDir string

	// MaxInFlight bounds messages being verified at once (default 256 per
	// CPU). DNS latency, not CPU, dominates verification, so many messages
	// per core keep the CPUs busy.
	MaxInFlight int
	// MaxInFlightBytes bounds the bytes of messages being verified at once
	// (default 256 MiB). A single larger message is still admitted when
	// nothing else is in flight.
	MaxInFlightBytes int64
	// MaxMessageBytes is the largest message verified; larger records go
	// to the DLQ as too-large (default 64 MiB).
	MaxMessageBytes int
	// BatchInterval is how long one batch (one transaction, or one offset
	// commit) keeps taking new records before it drains and commits
	// (default 250ms).
	BatchInterval time.Duration
	// BatchMaxRecords ends a batch early after this many records (default
	// 16 × MaxInFlight).
	BatchMaxRecords int
	// ShutdownGrace is how long in-flight messages may take to finish after
	// the context is cancelled; after it their batch is aborted (exactly
	// once) or left uncommitted (at least once), to be redone by the next
	// owner (default 15s).
	ShutdownGrace time.Duration
	// RetryTemperror re-verifies a message whose verdict holds a temperror,
	// after RetryDelay, up to this many times before emitting it (default 0).
	RetryTemperror int
	// RetryDelay is the wait before such a retry (default 2s).
	RetryDelay time.Duration
	// SessionTimeout is the group session timeout (default 45s).
	SessionTimeout time.Duration
	// RebalanceTimeout is the group rebalance timeout (default 60s).
	RebalanceTimeout time.Duration
	// TransactionTimeout is the broker-side transaction timeout (default 60s).
	TransactionTimeout time.Duration
	// FetchMaxWait is how long the broker may hold a fetch that has
	// nothing to return (default 500ms, Kafka's own clients' default).
	// It also bounds how long a partition newly assigned (at a start or
	// a rebalance) can wait: franz-go adds it to the fetches only once the
	// fetch in flight returns, and a fetch of partitions with nothing new
	// is held this long. At franz-go's own default, 5s, a message produced
	// to such a partition waited 5 s after each restart.
	FetchMaxWait time.Duration

	// RetryTopic and StragglerWait keep one slow message from holding the
	// stream. A batch commits only when every message in it is done, so a
	// message whose DNS never answers (seconds, up to the engine's DNS
	// budget) would stop all progress for that long. With both set, a batch
	// that has stopped taking records waits for its last messages while
	// they progress; once none has finished for StragglerWait (or after
	// ten StragglerWaits in all), each message still being verified is
	// written to RetryTopic as it came (key, value, envelope headers, plus header
	// authpipe.deferred with the number of deferrals), in the batch's
	// transaction, and its verification is cancelled. A second pipeline
	// reading RetryTopic, with RetryTopic "" (wait for every message), gives
	// them their verdicts; exactly once still holds, since each input
	// record yields one committed verdict, DLQ record or deferral. Default
	// "" and 0: every message is waited for.
	RetryTopic    string
	StragglerWait time.Duration

	// retryStage marks RetryStage's configuration: its topics are the
	// first stage's to check or create.
	retryStage bool
}

// RetryStage returns the configuration of the pipeline that reads c's
// RetryTopic: the same topics and bounds otherwise, its own group
// (c.Group + "-retry") and transactional ID (c.TransactionalID + "-retry",
// or without one its group's default), a quarter of the in-flight bounds
// (deferred messages are few, and slow on DNS rather than CPU), and no
// deferral of its own: it waits for every message, bounded by the engine's
// DNS budget.
func RetryStage(c Config) Config {
	r := c
	r.InputTopic = c.RetryTopic
	r.Group = c.Group + "-retry"
	if c.TransactionalID != "" {
		r.TransactionalID = c.TransactionalID + "-retry"
	}
	r.MaxInFlight = max(c.MaxInFlight/4, 16)
	r.MaxInFlightBytes = max(c.MaxInFlightBytes/4, int64(c.MaxMessageBytes))
	r.BatchMaxRecords = 16 * r.MaxInFlight
	r.RetryTopic, r.StragglerWait = "", 0
	r.SkipCreateTopics = true // the first stage creates them, RetryTopic included
	r.retryStage = true
	return r
}

// DNSQueriesPerMessage is how many DNS queries each message in flight may
// have on the wire at once without waiting for a slot of the resolver
// client (DNSQueriesInFlight). A message from domains the cache does not
// hold asks three at once: SPF's first record and the DMARC record, both
// prefetched (resolvercache.Cache.Prefetch), and its DKIM key; the fourth
// covers a second signature's or an ARC sealer's key. A prefetch that
// finds no slot free is looked up on a helper goroutine instead, which in
// BenchmarkPipelineColdCache cost about 19 µs of CPU a cold message: with
// the client's default 1,024 slots and 1,024 messages in flight, cold/warm
// was 0.40, with 4,096 slots 0.49 (session 19, docs/design-notes.md).
const DNSQueriesPerMessage = 4

// DNSQueriesInFlight is the resolver client's bound on queries in flight
// (resolvercache.WithMaxInFlight) that c's messages need:
// DNSQueriesPerMessage for each message in flight, the retry stage's
// included, and never below the client's default of 1,024.
func DNSQueriesInFlight(c Config) int {
	n := c.MaxInFlight
	if c.RetryTopic != "" {
		n += RetryStage(c).MaxInFlight
	}
	return max(DNSQueriesPerMessage*n, resolvercache.DefaultMaxInFlight)
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		Brokers:            []string{"127.0.0.1:9092"},
		InputTopic:         "mail.raw",
		VerdictTopic:       "mail.verdicts",
		DLQTopic:           "mail.raw.dlq",
		AggregateTopic:     "authpipe.aggregates",
		Group:              "authpipe-verify",
		Partitions:         12,
		ReplicationFactor:  -1,
		Delivery:           ExactlyOnce,
		MaxInFlight:        256 * runtime.GOMAXPROCS(0),
		MaxInFlightBytes:   256 << 20,
		MaxMessageBytes:    64 << 20,
		BatchInterval:      250 * time.Millisecond,
		ShutdownGrace:      15 * time.Second,
		RetryDelay:         2 * time.Second,
		SessionTimeout:     45 * time.Second,
		RebalanceTimeout:   60 * time.Second,
		TransactionTimeout: 60 * time.Second,
		FetchMaxWait:       500 * time.Millisecond,
	}
}

// withDefaults fills zero fields from Defaults and checks the rest.
func (c Config) withDefaults() (Config, error) {
	d := Defaults()
	if len(c.Brokers) == 0 {
		c.Brokers = d.Brokers
	}
	str := func(p *string, def string) {
		if *p == "" {
			*p = def
		}
	}
	str(&c.InputTopic, d.InputTopic)
	str(&c.VerdictTopic, d.VerdictTopic)
	str(&c.DLQTopic, d.DLQTopic)
	str(&c.AggregateTopic, d.AggregateTopic)
	str(&c.Group, d.Group)
	str((*string)(&c.Delivery), string(d.Delivery))
	str(&c.InstanceLockDir, os.TempDir())
	if c.Partitions == 0 {
		c.Partitions = d.Partitions
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = d.ReplicationFactor
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = d.MaxInFlight
	}
	if c.MaxInFlightBytes == 0 {
		c.MaxInFlightBytes = d.MaxInFlightBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = d.MaxMessageBytes
	}
	if c.BatchInterval == 0 {
		c.BatchInterval = d.BatchInterval
	}
	if c.BatchMaxRecords == 0 {
		c.BatchMaxRecords = 16 * c.MaxInFlight
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = d.ShutdownGrace
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = d.RetryDelay
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = d.SessionTimeout
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = d.RebalanceTimeout
	}
	if c.TransactionTimeout == 0 {
		c.TransactionTimeout = d.TransactionTimeout
	}
	if c.FetchMaxWait == 0 {
		c.FetchMaxWait = d.FetchMaxWait
	}
	switch {
	case (c.RetryTopic == "") != (c.StragglerWait <= 0):
		return c, fmt.Errorf("pipeline: RetryTopic %q and StragglerWait %s: set both (deferral on) or neither", c.RetryTopic, c.StragglerWait)
	case c.RetryTopic != "" && (c.RetryTopic == c.InputTopic || c.RetryTopic == c.VerdictTopic || c.RetryTopic == c.DLQTopic || c.RetryTopic == c.AggregateTopic):
		return c, fmt.Errorf("pipeline: RetryTopic %q must differ from the input, verdict, DLQ and aggregate topics", c.RetryTopic)
	case c.Delivery != ExactlyOnce && c.Delivery != AtLeastOnce:
		return c, fmt.Errorf("pipeline: delivery %q: want %q or %q", c.Delivery, ExactlyOnce, AtLeastOnce)
	case c.MaxInFlight < 0 || c.MaxInFlightBytes < 0 || c.MaxMessageBytes < 0 || c.BatchMaxRecords < 0:
		return c, fmt.Errorf("pipeline: in-flight and size bounds must be positive")
	case c.Partitions < 0:
		return c, fmt.Errorf("pipeline: partitions must be positive, got %d", c.Partitions)
	case c.RetryTemperror < 0:
		return c, fmt.Errorf("pipeline: retry count must not be negative")
	case c.InputTopic == c.VerdictTopic || c.InputTopic == c.DLQTopic || c.InputTopic == c.AggregateTopic:
		return c, fmt.Errorf("pipeline: input topic %q must differ from the output topics", c.InputTopic)
	}
	return c, nil
}

// MemoryBudget is MemoryBound's answer: the memory a Pipeline may add to
// its process, term by term. Each term is a bound the code enforces.
type MemoryBudget struct {
	// InFlight is Config.MaxInFlightBytes: the raw messages being verified.
	InFlight int64
	// Work is what verifying them needs besides their bytes: per message
	// stages.MessageWorkBytes (goroutine stacks, parse state, lookups in
	// flight, verdict; measured by stages' TestMessageWorkBytesBound) and
	// the verdict's JSON and output record, times Config.MaxInFlight, plus
	// stages.MessageCopies (2) times the in-flight bytes: the parse state
	// that grows with a message's size (CRLF copy, unfolded fields, ARC
	// seal input and AAR payloads; one copy until session 9, which a 50-set
	// ARC chain overran, three in session 9, when ARC tags were copied).
	Work int64
	// Fetch is the client's fetch buffering: one fetch of at most
	// fetchMaxBytes buffered, one being decoded, each decompressed to at
	// most fetchDecompression times its size (an assumption: email text
	// compresses 3–8× with snappy, lz4 or zstd; a compression bomb beyond
	// that is not bounded by the client), and as much again in
	// decompression buffers kept for reuse (decompressPool).
	Fetch int64
	// Produce is kgo.MaxBufferedBytes: verdicts, DLQ records and partial
	// aggregates waiting to be acknowledged.
	Produce int64
	// DNSCache is the resolver cache's byte budget (resolvercache.WithMaxBytes).
	DNSCache int64
	// Engine is what the verification engine's own caches (DKIM keys,
	// parsed SPF and DMARC records) may hold: its Engine.CacheBytes
	// (stages.CacheBytes with the default key cache). They grow
	// with the sender domains seen, not with the traffic; one Engine serves
	// the pipeline and its retry stage.
	Engine int64
	// Aggregates bounds a batch's partial aggregates: at most one row per
	// record of the batch, aggregateRowBytes each.
	Aggregates int64
	// Retry is the retry stage's share (RetryStage: its in-flight, work,
	// fetch, produce and aggregate terms) when c defers stragglers.
	Retry int64
	// GCHeadroom multiplies the live total: with GOGC=100 the heap grows
	// to twice the live heap before a collection (set GOMEMLIMIT to the
	// Total to hold it there under pressure).
	GCHeadroom float64
	// Total is GCHeadroom × the sum of the terms.
	Total int64
}

const (
	workPerMessage     = stages.MessageWorkBytes + 4<<10 // and the verdict's JSON and output record
	fetchDecompression = 8
	aggregateRowBytes  = 512
)

// MemoryBound returns the memory budget of a pipeline with configuration c
// (defaults filled in, as Pipeline.Config returns it), a DNS cache of
// dnsCacheBytes and one stages.Engine whose caches hold at most
// engineCacheBytes (Engine.CacheBytes). The embedded broker is not included:
// its topic data is on disk with a data directory (resident only without
// one), its index a few hundred bytes per stored batch.
func MemoryBound(c Config, dnsCacheBytes, engineCacheBytes int64) MemoryBudget {
	b := MemoryBudget{
		InFlight:   c.MaxInFlightBytes,
		Work:       int64(c.MaxInFlight)*workPerMessage + stages.MessageCopies*c.MaxInFlightBytes,
		Fetch:      3 * decompressPoolBytes,
		Produce:    producerBufferBytes(c),
		DNSCache:   dnsCacheBytes,
		Engine:     engineCacheBytes,
		Aggregates: int64(c.BatchMaxRecords) * aggregateRowBytes,
		GCHeadroom: 2,
	}
	if c.RetryTopic != "" {
		r := MemoryBound(RetryStage(c), 0, 0)
		b.Retry = r.InFlight + r.Work + r.Fetch + r.Produce + r.Aggregates
	}
	b.Total = int64(b.GCHeadroom * float64(b.InFlight+b.Work+b.Fetch+b.Produce+b.DNSCache+b.Engine+b.Aggregates+b.Retry))
	return b
}

// GoMemoryLimit is the Go runtime memory limit (runtime/debug.SetMemoryLimit)
// that holds the process under the bound: 75% of Total, since the limit is
// soft and counts only the memory the Go runtime manages, not all of RSS.
// With it the GC target can be generous (GOGC 400 in `authpipe run`): the
// heap grows towards the limit instead of past the bound.
func (b MemoryBudget) GoMemoryLimit() int64 { return b.Total / 4 * 3 }

// fetchMaxBytes is the most one fetch response may carry (kgo.FetchMaxBytes
// and FetchMaxPartitionBytes; one record batch larger than that still
// comes whole): 1 MiB, Kafka's own max.partition.fetch.bytes.
//
// It was a quarter of the in-flight bytes within 1–4 MiB until session 16
// (and up to 16 MiB until session 10), so 4 MiB with the defaults. A
// consumer behind its topic fills every fetch, and the client read each
// 4 MiB response into a fresh buffer, which kfake had built by doubling
// from the first batch (handleFetch), and the heap churned through pages
// it handed back and faulted in again. At 1 MiB the pipeline takes 37%
// fewer page faults in BenchmarkPipelineVsEngine, and its ratio rose from
// 0.67 to 0.71 (scripts/benchab -n 8 b66d8f2 51430da; docs/design-notes.md).
// 1 MiB of compressed mail is still 1,500 or more messages of 4–5 KB a
// round trip, more than one instance verifies in a millisecond.
const fetchMaxBytes = 1 << 20

// decompressPoolBytes is one fetch decompressed: what the client's
// decompression buffers kept for reuse may hold (decompressPool), and what
// MemoryBound charges for each fetch buffered or being decoded.
const decompressPoolBytes = fetchMaxBytes * fetchDecompression

// producerBufferBytes bounds the records produced and not yet acknowledged
// (kgo.MaxBufferedBytes): the in-flight bytes plus one largest message (a
// DLQ copy), at most 2 GiB.
func producerBufferBytes(c Config) int64 {
	return min(c.MaxInFlightBytes+int64(c.MaxMessageBytes), 1<<31)
}
