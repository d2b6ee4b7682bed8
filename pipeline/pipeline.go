// Package pipeline runs authpipe's verification as a Kafka stream processor:
// a Source (a consumer in group authpipe-verify on mail.raw), a bounded
// worker pool running the verification engine, and Sinks (verdicts to
// mail.verdicts, undecodable records to mail.raw.dlq). The topic contracts
// are those of docs/ARCHITECTURE ("Topic contracts").
//
// # Batches and delivery guarantees
//
// Records are taken in batches. A batch keeps taking records for
// Config.BatchInterval (or up to Config.BatchMaxRecords), feeding each to
// the pool as soon as it arrives, and ends early when no record has come for
// a tenth of the interval (at most 20ms: the input is drained, so waiting
// longer only delays the commit and idles the CPUs); then it stops taking
// records, waits for its in-flight work to finish, and commits. Only
// finished work is ever committed.
//
// One message whose DNS never answers would hold its batch, and so the
// whole stream, for seconds. With Config.RetryTopic and
// Config.StragglerWait set, a batch waits for its last messages only while
// they keep finishing: once none has finished for StragglerWait, those
// still being verified are written to RetryTopic in the batch (and their
// verifications cancelled), and a second pipeline
// reading RetryTopic gives them their verdicts (RetryStage builds its
// configuration). Each input record still yields exactly one of: a
// verdict, a DLQ record, a deferral.
//
// With ExactlyOnce (the default) a batch is a Kafka transaction (KIP-98)
// opened with kgo.GroupTransactSession: the verdicts, the DLQ records and
// the batch's input offsets (KIP-447, RequireStableFetchOffsets, input read
// read_committed) commit atomically. A crash, a rebalance that revokes a
// partition mid-batch, or a failed produce aborts the transaction; the
// batch's records are then consumed again by whoever owns them, and the
// aborted verdicts are invisible to read_committed consumers. So each input
// record yields exactly one committed verdict (or DLQ record).
//
// With AtLeastOnce a batch produces idempotently, flushes, then commits its
// offsets; rebalances are held off between a poll and that commit
// (kgo.BlockRebalanceOnPoll). A crash between produce and commit redoes
// the batch: verdicts may be duplicated, never lost.
//
// # Bounds and backpressure
//
// At most Config.MaxInFlight messages and Config.MaxInFlightBytes bytes are
// verified at once. When either bound is reached the loop stops polling, so
// the client's fetch buffer (one fetch per broker, at most a quarter of
// MaxInFlightBytes between 1 and 4 MiB, plus one oversized batch) fills and
// fetching stops: there is no unbounded buffer. Produced records wait in a
// buffer of at most MaxInFlightBytes + MaxMessageBytes. MemoryBound adds
// these up, with the DNS cache's budget, into the memory a pipeline may use.
// Messages over Config.MaxMessageBytes go to the DLQ as too-large (their
// DLQ copy is truncated to the cap, with header authpipe.truncated giving
// the original size).
//
// # Shutdown
//
// When Run's context ends the loop stops polling, lets in-flight messages
// finish for up to Config.ShutdownGrace, commits their batch, leaves the
// group and returns nil. Past the grace period the batch is aborted (or
// left uncommitted) and redone by the next owner.
//
// DNS failures do not stall the stream: the engine bounds each message's
// DNS time and reports temperror (and slow messages can be deferred, as
// above); Config.RetryTemperror optionally re-verifies such a message after
// Config.RetryDelay before emitting it.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// Verifier verifies one message; *stages.Engine is the implementation. It
// must be safe for concurrent use and always return a verdict.
type Verifier interface {
	Verify(ctx context.Context, raw []byte, env stages.Envelope) *verdict.Verdict
}

// Pipeline is one verify-worker instance. Create it with New and run it
// with Run; several instances with the same Group share the partitions.
type Pipeline struct {
	cfg  Config
	host string // for the default transactional ID
	// txnID is the transactional ID Run uses: cfg's, or the one it claims
	// (claimTransactionalID); "" at least once. Set and read only by Run.
	txnID    string
	verifier Verifier
	log      *slog.Logger
	metrics  *Metrics
	kopts    []kgo.Opt
	ready    atomic.Bool
	jsonBufs sync.Pool // *[]byte for verdict encodings; see maxPooledJSON
	// decompress lends the Kafka client its decompression buffers.
	decompress *decompressPool
	// stackLogged is when a verification panic's stack was last logged
	// (Unix nanoseconds); see outputContained.
	stackLogged atomic.Int64
}

// maxPooledJSON bounds the capacity of a verdict buffer kept for reuse; a
// typical verdict is 1–2 KiB.
const maxPooledJSON = 16 << 10

// Option configures a Pipeline.
type Option func(*Pipeline)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(p *Pipeline) { p.log = l } }

// WithMetrics sets the collectors to update (default: unregistered ones).
func WithMetrics(m *Metrics) Option { return func(p *Pipeline) { p.metrics = m } }

// WithKafkaOpts adds franz-go client options: TLS (kgo.DialTLSConfig), SASL
// (kgo.SASL), hooks such as the kprom plugin (kgo.WithHooks), a logger
// (kgo.WithLogger with kslog). They apply to every client the pipeline
// opens.
func WithKafkaOpts(opts ...kgo.Opt) Option {
	return func(p *Pipeline) { p.kopts = append(p.kopts, opts...) }
}

// New checks cfg (filling defaults) and returns a Pipeline that verifies
// with v.
func New(cfg Config, v Verifier, opts ...Option) (*Pipeline, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	p := &Pipeline{cfg: cfg, host: host, verifier: v, decompress: newDecompressPool(decompressPoolBytes)}
	p.jsonBufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	for _, o := range opts {
		o(p)
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.metrics == nil {
		p.metrics, _ = NewMetrics(nil)
	}
	return p, nil
}

// Config returns the effective configuration, defaults filled in.
func (p *Pipeline) Config() Config { return p.cfg }

// Ready reports whether Run has created its topics and joined the stream,
// and is not recovering from a batch whose end failed (afterFailedEnd).
func (p *Pipeline) Ready() bool { return p.ready.Load() }

// Run processes records until ctx ends (then drains, commits and returns
// nil) or a fatal error occurs.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.ready.Store(false)
	if !p.cfg.SkipCreateTopics {
		if err := p.ensureTopics(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	} else if !p.cfg.retryStage {
		// Writing to a topic that does not exist fails every batch that
		// writes there, and so redoes it for ever; reading one makes the
		// run idle without a word: say so at start. (The retry stage's
		// topics are checked, or made, by the first stage.)
		if err := p.checkTopics(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	txnID, release, err := p.transactionalID(ctx)
	if err != nil {
		return err
	}
	defer release()
	p.txnID = txnID
	st, err := p.openStream()
	if err != nil {
		return err
	}
	defer st.close()
	p.ready.Store(true)
	p.log.Info("pipeline running", "brokers", p.cfg.Brokers, "input", p.cfg.InputTopic,
		"verdicts", p.cfg.VerdictTopic, "dlq", p.cfg.DLQTopic, "group", p.cfg.Group,
		"delivery", p.cfg.Delivery, "transactional_id", p.txnID, "max_in_flight", p.cfg.MaxInFlight)

	// hard ends ShutdownGrace after ctx: in-flight work is abandoned then.
	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(p.cfg.ShutdownGrace, hardCancel)
		context.AfterFunc(hard, func() { t.Stop() })
	})
	defer stopGrace()

	pool := NewPool(p.cfg.MaxInFlight, p.cfg.MaxInFlightBytes)
	defer pool.Close()
	aborts := 0
	for ctx.Err() == nil {
		committed, n, err := p.batch(ctx, hard, st, pool)
		if err != nil {
			if err = p.afterFailedEnd(ctx, st, err); err != nil {
				return err
			}
			committed = false // as an abort: the records are redone
		}
		if n == 0 {
			continue
		}
		if committed {
			aborts = 0
			continue
		}
		aborts++
		if ctx.Err() == nil {
			// Back off a little when batches keep failing (a broker
			// problem, a rebalance storm) rather than spin.
			select {
			case <-time.After(time.Duration(min(aborts, 20)) * 50 * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}
	p.log.Info("pipeline stopped")
	return nil
}

// batch runs one batch: poll records into the pool until the batch is
// full, drain, end. n is the number of records taken.
func (p *Pipeline) batch(ctx, hard context.Context, st stream, pool *Pool) (committed bool, n int, err error) {
	aggs := newBatchAggregates()
	var (
		failMu  sync.Mutex
		failErr error
	)
	// fail records the batch's first failure. Produce promises call it
	// from the Kafka client's goroutines until the outputs are flushed, so
	// failErr is read through failed until then.
	fail := func(err error) {
		failMu.Lock()
		if failErr == nil {
			failErr = err
		}
		failMu.Unlock()
	}
	failed := func() error {
		failMu.Lock()
		defer failMu.Unlock()
		return failErr
	}
	var deadline time.Time
	began := false
	idleGap := batchIdleGap(p.cfg.BatchInterval)
	// work is the context of this batch's verifications: hard, also ended
	// when stragglers are deferred (deferStragglers).
	work, cancelWork := context.WithCancel(hard)
	defer cancelWork()
	var tasks []*recordTask   // with deferral on: the batch's records
	var finished atomic.Int64 // tasks whose handle returned, for deferStragglers
	for n < p.cfg.BatchMaxRecords {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if began {
			remaining := time.Until(deadline)
			if remaining <= 0 {
				break
			}
			pctx, cancel = context.WithTimeout(ctx, min(remaining, idleGap))
		}
		fs := st.poll(pctx, min(p.cfg.BatchMaxRecords-n, p.cfg.MaxInFlight))
		cancel()
		if fs.IsClientClosed() {
			return false, n, errors.New("pipeline: kafka client closed")
		}
		fs.EachError(func(t string, part int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				p.log.Warn("fetch error", "topic", t, "partition", part, "err", err)
			}
		})
		recs := fs.Records()
		if len(recs) == 0 {
			if !began {
				st.idle()
				return false, 0, nil
			}
			// Nothing came for idleGap: the input is drained for now, so
			// the batch ends rather than sit out its interval idle.
			break
		}
		if !began {
			if err := st.begin(); err != nil {
				return false, 0, fmt.Errorf("pipeline: begin transaction: %w", err)
			}
			began = true
			deadline = time.Now().Add(p.cfg.BatchInterval)
		}
		for _, r := range recs {
			n++
			size := recordBytes(r)
			start := time.Now()
			t := &recordTask{r: r}
			if p.cfg.RetryTopic != "" {
				tasks = append(tasks, t) // for deferStragglers only
			}
			blocked, err := pool.Go(hard, size, func() {
				p.metrics.inFlight.Inc()
				p.metrics.inFlightB.Add(float64(size))
				defer p.metrics.inFlight.Dec()
				defer p.metrics.inFlightB.Sub(float64(size))
				defer finished.Add(1)
				p.handle(work, st, t, aggs, fail)
			})
			if blocked {
				p.metrics.pausedTime.Add(time.Since(start).Seconds())
			}
			if err != nil {
				fail(fmt.Errorf("shutdown grace period over: %w", err))
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	if !began {
		return false, 0, nil
	}
	if p.cfg.RetryTopic != "" && hard.Err() == nil {
		p.deferStragglers(ctx, st, pool, tasks, &finished, cancelWork, fail)
	}
	pool.Wait()
	p.metrics.batchSize.Observe(float64(n))
	if failed() == nil && hard.Err() == nil {
		// Partial aggregates go into the same transaction (or, at least
		// once, are flushed before the offset commit).
		aggs.produce(context.WithoutCancel(ctx), st, p.cfg.AggregateTopic, fail)
	}
	start := time.Now()
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.endTimeout())
	defer cancel()
	// Every output's promise has been called once the flush returns, so
	// a produce that failed is seen before the commit. franz-go's End
	// flushes too, but decides only on what it tracks itself: records
	// failed before they reached a partition (a verdict topic that does
	// not exist) left the transaction clean, and it committed the input
	// offsets without their verdicts (TestMissingOutputTopicLosesNothing).
	if err := st.flush(endCtx); err != nil {
		fail(fmt.Errorf("pipeline: flush outputs: %w", err))
	}
	batchErr := failed()
	commit := batchErr == nil && hard.Err() == nil
	if !commit {
		if batchErr == nil {
			batchErr = hard.Err()
		}
		p.log.Warn("aborting batch; its records will be redone", "records", n, "err", batchErr)
	}
	committed, err = st.end(endCtx, commit)
	p.metrics.commitObs.Observe(time.Since(start).Seconds())
	if err != nil {
		return false, n, &endError{records: n, err: err, txnID: p.txnID}
	}
	if committed {
		p.metrics.batches.WithLabelValues("committed").Inc()
	} else {
		p.metrics.batches.WithLabelValues("aborted").Inc()
		if commit {
			p.log.Info("batch aborted by a rebalance; its records will be redone", "records", n)
		}
	}
	return committed, n, nil
}

// transactionalID returns the transactional ID for Run: "" at least
// once, the configured one, or one claimed for this instance
// (claimTransactionalID), held until release.
func (p *Pipeline) transactionalID(ctx context.Context) (id string, release func(), err error) {
	switch {
	case p.cfg.Delivery != ExactlyOnce:
		return "", func() {}, nil
	case p.cfg.TransactionalID != "":
		return p.cfg.TransactionalID, func() {}, nil
	}
	id, release, err = claimTransactionalID(p.cfg.InstanceLockDir, p.cfg.Group, p.host, p.clusterID(ctx), p.cfg.Brokers)
	if id == "" {
		return "", nil, err
	}
	if err != nil {
		p.log.Warn("transactional id not claimed: another instance of this group on this host would fence this one; give each a --transactional-id",
			"transactional_id", id, "err", err)
	}
	return id, release, nil
}

// endTimeout bounds the end of a batch: flushing its outputs, committing
// its offsets and ending its transaction.
func (p *Pipeline) endTimeout() time.Duration { return max(p.cfg.TransactionTimeout, 10*time.Second) }

// endError is a batch whose end (stream.end) failed.
type endError struct {
	records int
	err     error
	txnID   string // the producer's transactional ID, "" without transactions
}

func (e *endError) Error() string {
	if e.txnID != "" && errors.Is(e.err, kerr.ProducerFenced) {
		// The broker's own text says only that a newer producer
		// exists; say which ID and what to do about it.
		return fmt.Sprintf("pipeline: end batch: %v (another process started with transactional id %q: "+
			"each instance, of any group, needs an id of its own, see --transactional-id; this one stops)", e.err, e.txnID)
	}
	return fmt.Sprintf("pipeline: end batch: %v", e.err)
}
func (e *endError) Unwrap() error { return e.err }

// maxAbortAttempts bounds afterFailedEnd's attempts to abort a batch whose
// end failed; its backoff between them adds up to 15.5 s.
const maxAbortAttempts = 6

// afterFailedEnd answers an error from batch. A broker moving a partition
// leader or a transaction coordinator, or a connection dropped at the
// wrong moment, can fail a batch's end after franz-go has retried what it
// could (TestBrokerFaults); the batch did not commit, and, as for an
// abort, its records are consumed again. So the run goes on: what is left
// of the batch is aborted (an end cut short by its deadline leaves
// records buffered and the transaction open) and the consumer moved to
// the offsets the broker holds for the group (stream.resync: the commit
// may have taken effect unseen), with backoff, up to maxAbortAttempts
// times. The run ends with the error when it is not an
// end's, when the producer was fenced (another instance took the
// transactional ID) or not authorized, or when the abort keeps failing:
// a process that restarts is then better off than one that spins.
func (p *Pipeline) afterFailedEnd(ctx context.Context, st stream, err error) error {
	var ee *endError
	if !errors.As(err, &ee) || fatalEndError(ee.err) {
		return err
	}
	p.log.Warn("batch end failed; aborting the batch, its records will be redone", "records", ee.records, "err", ee.err)
	p.ready.Store(false) // until the batch is aborted: /readyz says so
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.endTimeout())
		_, aerr := st.end(actx, false)
		if aerr == nil {
			aerr = st.resync(actx, p.cfg.Group)
		}
		cancel()
		if aerr == nil {
			p.metrics.batches.WithLabelValues("aborted").Inc()
			p.ready.Store(true)
			return nil
		}
		if fatalEndError(aerr) || attempt == maxAbortAttempts {
			return fmt.Errorf("%w; aborting the batch then failed %d times, last: %w", err, attempt, aerr)
		}
		p.log.Warn("aborting a failed batch", "attempt", attempt, "err", aerr)
		select {
		case <-time.After(time.Duration(1<<attempt) * 250 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

// fatalEndError reports whether a batch's end failed in a way no retry
// mends: the producer fenced by a newer one with the same transactional
// ID, an authorization refused, or the client closed.
func fatalEndError(err error) bool {
	var ke *kerr.Error
	if errors.As(err, &ke) {
		switch ke {
		case kerr.ProducerFenced, kerr.TransactionalIDAuthorizationFailed, kerr.GroupAuthorizationFailed,
			kerr.TopicAuthorizationFailed, kerr.ClusterAuthorizationFailed:
			return true
		}
	}
	return errors.Is(err, kgo.ErrClientClosed)
}

// batchIdleGap is how long an open batch waits for more records before it
// ends early: a tenth of the interval, at most 20ms.
func batchIdleGap(interval time.Duration) time.Duration {
	return max(min(interval/10, 20*time.Millisecond), time.Millisecond)
}

// recordTask is one record of a batch being handled. Its state moves once, from
// taskRunning to taskDone (handle emits its verdict or DLQ record) or to
// taskDeferred (deferStragglers writes it to RetryTopic); whichever moves
// it writes the record's one output.
type recordTask struct {
	r     *kgo.Record
	state atomic.Int32
}

const (
	taskRunning int32 = iota
	taskDone
	taskDeferred
)

func (t *recordTask) claim() bool { return t.state.CompareAndSwap(taskRunning, taskDone) }

// stragglerMaxWaits bounds a batch's wait for its last messages at this
// many StragglerWaits, however they progress.
const stragglerMaxWaits = 10

// HeaderDeferred is set on a record written to RetryTopic: how many times
// the message has been deferred.
const HeaderDeferred = "authpipe.deferred"

// deferStragglers waits for the batch's work while it progresses. Once no
// message has finished for StragglerWait (those left are waiting on DNS,
// not on the CPUs), or after stragglerMaxWaits × StragglerWait in all, the
// messages still being verified go to RetryTopic (in the batch's stream)
// and their verifications are cancelled, so the batch can commit. Waiting
// for progress rather than a fixed time keeps a slow but answering
// resolver's traffic in the stream: only the last few messages of a batch,
// once they stop finishing, are deferred.
func (p *Pipeline) deferStragglers(ctx context.Context, st stream, pool *Pool, tasks []*recordTask, finished *atomic.Int64, cancelWork context.CancelFunc, fail func(error)) {
	done := make(chan struct{})
	go func() { pool.Wait(); close(done) }()
	quiet := p.cfg.StragglerWait
	tick := time.NewTicker(max(quiet/8, time.Millisecond))
	defer tick.Stop()
	start := time.Now()
	last, lastAt := finished.Load(), start
wait:
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			if n := finished.Load(); n != last {
				last, lastAt = n, now
			}
			if now.Sub(lastAt) >= quiet || now.Sub(start) >= stragglerMaxWaits*quiet {
				break wait
			}
		}
	}
	deferred := 0
	for _, t := range tasks {
		if !t.state.CompareAndSwap(taskRunning, taskDeferred) {
			continue
		}
		deferred++
		out := p.retryRecord(t.r)
		st.produce(context.WithoutCancel(ctx), out, func(_ *kgo.Record, err error) {
			if err != nil {
				fail(fmt.Errorf("pipeline: produce to %s: %w", out.Topic, err))
			}
		})
	}
	cancelWork()
	if deferred > 0 {
		p.metrics.deferred.Add(float64(deferred))
		p.log.Debug("deferred slow messages", "topic", p.cfg.RetryTopic, "messages", deferred, "after", p.cfg.StragglerWait.String())
	}
	<-done
}

// retryRecord is r as written to RetryTopic: key, value, timestamp and
// headers kept, HeaderDeferred set to one more than r's.
func (p *Pipeline) retryRecord(r *kgo.Record) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+1)
	times := 0
	for _, h := range r.Headers {
		if h.Key == HeaderDeferred {
			times, _ = strconv.Atoi(string(h.Value))
			continue
		}
		hs = append(hs, h)
	}
	hs = append(hs, kgo.RecordHeader{Key: HeaderDeferred, Value: []byte(strconv.Itoa(times + 1))})
	return &kgo.Record{Topic: p.cfg.RetryTopic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp}
}

// handle turns one input record into one output record: a verdict, or the
// record itself with an error header for the DLQ.
func (p *Pipeline) handle(ctx context.Context, st stream, t *recordTask, aggs *batchAggregates, fail func(error)) {
	r := t.r
	start := time.Now()
	in, err := Decode(r, p.cfg.MaxMessageBytes)
	p.metrics.decodeObs.Observe(time.Since(start).Seconds())
	var out *kgo.Record
	var buf *[]byte // the verdict's encoding, reused once the record is produced
	if err != nil {
		if !t.claim() {
			return
		}
		out = p.dlqRecord(r, err)
	} else {
		buf = p.jsonBufs.Get().(*[]byte)
		var keyBuf [256]byte
		o, row, key, panicked := p.outputContained(ctx, r, in, (*buf)[:0], keyBuf[:0])
		switch {
		case panicked != nil:
			p.jsonBufs.Put(buf)
			buf = nil
			if !t.claim() {
				return
			}
			out = p.dlqRecord(r, panicked)
		case ctx.Err() != nil:
			// Deferred (the record went to RetryTopic; deferStragglers
			// marks it before it cancels), or past the grace period: the
			// verdict may be a spurious temperror, so the batch aborts.
			// Either way this verdict is not emitted.
			p.jsonBufs.Put(buf)
			if t.state.Load() != taskDeferred {
				fail(ctx.Err())
			}
			return
		case o.err != nil:
			p.jsonBufs.Put(buf)
			fail(o.err)
			return
		case !t.claim():
			p.jsonBufs.Put(buf)
			return // deferred while being encoded
		default:
			p.metrics.countVerdict(o.v)
			if o.reportable {
				aggs.add(&row, key)
			}
			out = &kgo.Record{Topic: p.cfg.VerdictTopic, Key: r.Key, Value: o.js}
		}
	}
	st.produce(context.WithoutCancel(ctx), out, func(_ *kgo.Record, err error) {
		if err != nil {
			fail(fmt.Errorf("pipeline: produce to %s: %w", out.Topic, err))
		}
		// The client holds no reference to the value after the promise.
		if buf != nil && cap(out.Value) <= maxPooledJSON {
			*buf = out.Value[:0]
			p.jsonBufs.Put(buf)
		}
		// Nor to r's key and value (the output shares them), and handle
		// is done with r: its decompressed batch may be used again once
		// every record in it is recycled (decompressPool).
		r.Recycle()
	})
}

// output is what one message's bytes lead to: its verdict, the verdict's
// JSON and whether it counts in an aggregate row.
type output struct {
	v          *verdict.Verdict
	js         []byte
	reportable bool
	err        error // encoding or row failed: the batch fails
}

// outputContained verifies in and encodes the verdict: its JSON (into js)
// and its aggregate row and row key (into key). The row and key are
// results of their own, not fields of output: escape analysis would count
// the key as escaping with the verdict, and move the caller's key buffer
// to the heap for every message. A panic in any of it is contained to the
// record. A
// panic is a bug met on this message; left alone it would end the process,
// whose restart would read the same uncommitted record and panic again,
// stopping its partition for good. Contained, it becomes a *DecodeError of
// kind verify-panic, for the record to go to the DLQ with the panic in its
// authpipe.error header (to be replayed once the bug is fixed), and an
// error log. The log carries the stack at most once a minute per pipeline,
// so a bug that many messages meet does not flood it.
func (p *Pipeline) outputContained(ctx context.Context, r *kgo.Record, in *Input, js, key []byte) (o output, row reportgen.VerdictRow, rowKey []byte, panicked error) {
	defer func() {
		x := recover()
		if x == nil {
			return
		}
		stack := debug.Stack()
		var pe *stages.PanicError // raised again by Verify for a helper goroutine
		if err, ok := x.(error); ok && errors.As(err, &pe) {
			stack = pe.Stack
		}
		attrs := []any{"topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "panic", fmt.Sprint(x)}
		now := time.Now().UnixNano()
		if last := p.stackLogged.Load(); now-last >= int64(time.Minute) && p.stackLogged.CompareAndSwap(last, now) {
			attrs = append(attrs, "stack", string(stack))
		}
		p.log.Error("verification panicked (a bug); record to the DLQ", attrs...)
		o, panicked = output{}, &DecodeError{Kind: KindVerifyPanic, Reason: fmt.Sprint(x)}
	}()
	o.v = p.verify(ctx, in)
	if ctx.Err() != nil {
		return o, row, nil, nil
	}
	o.v.Key = string(r.Key)
	start := time.Now()
	o.js, o.err = verdict.AppendJSON(js, o.v)
	p.metrics.encodeObs.Observe(time.Since(start).Seconds())
	if o.err != nil {
		o.err = fmt.Errorf("pipeline: encode verdict: %w", o.err)
		return o, row, nil, nil
	}
	row, rowKey, o.err = reportgen.VerdictRowOf(o.v, key)
	switch {
	case errors.Is(o.err, reportgen.ErrNoPolicy):
		o.err = nil // not reportable
	case o.err != nil:
		o.err = fmt.Errorf("pipeline: aggregate verdict: %w", o.err)
	default:
		o.reportable = true
	}
	return o, row, rowKey, nil
}

func (p *Pipeline) verify(ctx context.Context, in *Input) *verdict.Verdict {
	start := time.Now()
	v := p.verifier.Verify(ctx, in.Raw, in.Envelope)
	for i := 0; i < p.cfg.RetryTemperror && hasTemperror(v); i++ {
		p.metrics.retries.Inc()
		select {
		case <-time.After(p.cfg.RetryDelay):
		case <-ctx.Done():
			return v
		}
		v = p.verifier.Verify(ctx, in.Raw, in.Envelope)
	}
	p.metrics.verifyObs.Observe(time.Since(start).Seconds())
	return v
}

func (p *Pipeline) dlqRecord(r *kgo.Record, err error) *kgo.Record {
	var de *DecodeError
	kind := "unknown"
	if errors.As(err, &de) {
		kind = de.Kind
	}
	p.metrics.dlq.WithLabelValues(kind).Inc()
	p.log.Debug("record to DLQ", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
	// The copy must fit the producer's batch limit (MaxMessageBytes + 1
	// MiB) whatever the input topic let in, or its batch would fail and be
	// redone for ever: the value is cut to the message cap, the key to
	// MaxKeyBytes, the headers to dlqHeaderBytes with their wire overhead,
	// each cut said in a header.
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+3)
	hb := 0
	for i, h := range r.Headers {
		if hb += len(h.Key) + len(h.Value) + headerOverhead; hb > dlqHeaderBytes {
			hs = append(hs, kgo.RecordHeader{Key: HeaderHeadersTruncated, Value: []byte(strconv.Itoa(len(r.Headers) - i))})
			break
		}
		hs = append(hs, h)
	}
	errText := err.Error()
	if len(errText) > 1024 {
		errText = errText[:1024]
	}
	hs = append(hs, kgo.RecordHeader{Key: HeaderError, Value: []byte(errText)})
	val := r.Value
	if len(val) > p.cfg.MaxMessageBytes {
		hs = append(hs, kgo.RecordHeader{Key: HeaderTruncated, Value: []byte(strconv.Itoa(len(val)))})
		val = val[:p.cfg.MaxMessageBytes]
	}
	key := r.Key
	if len(key) > MaxKeyBytes {
		hs = append(hs, kgo.RecordHeader{Key: HeaderKeyTruncated, Value: []byte(strconv.Itoa(len(key)))})
		key = key[:MaxKeyBytes]
	}
	return &kgo.Record{Topic: p.cfg.DLQTopic, Key: key, Value: val, Headers: hs, Timestamp: r.Timestamp}
}

const (
	// dlqHeaderBytes bounds the input's headers a DLQ copy keeps, wire
	// overhead included: half the producer's margin over the message cap.
	dlqHeaderBytes = 512 << 10
	// headerOverhead is the most a record header adds on the wire beyond
	// its key and value: two varint lengths.
	headerOverhead = 10
)

// HeaderKeyTruncated is set on a DLQ record whose key was cut to
// MaxKeyBytes; its value is the original size in bytes.
const HeaderKeyTruncated = "authpipe.key-truncated"

// HeaderHeadersTruncated is set on a DLQ record that kept only some of the
// input's headers (over dlqHeaderBytes); its value is how many were left
// out, the last ones.
const HeaderHeadersTruncated = "authpipe.headers-truncated"

// HeaderTruncated is set on a DLQ record whose value was cut to the size
// cap; its value is the original size in bytes.
const HeaderTruncated = "authpipe.truncated"
