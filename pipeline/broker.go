package pipeline

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the listen address (default 127.0.0.1:9092). Port 0 picks a
	// free port.
	Addr string
	// DataDir persists topics, records and committed offsets across
	// restarts; "" keeps everything in memory.
	DataDir string
	// MaxMessageBytes is the broker's message.max.bytes (default 65 MiB,
	// above the pipeline's 64 MiB message cap; kfake's own default is 1 MiB).
	MaxMessageBytes int
	// MinSessionTimeout lowers the smallest group session timeout the
	// broker accepts (default 6s as in Kafka); tests use less.
	MinSessionTimeout time.Duration
	// Retention is how long records are kept (Kafka's log.retention.ms;
	// default 7 days, as in Kafka). RetentionBytes, when positive, also
	// caps each partition's bytes (log.retention.bytes; default no cap).
	// Both are enforced every RetentionCheck (default 5 minutes, Kafka's
	// log.retention.check.interval.ms). Without a DataDir the topics live
	// in this process's memory, about 0.8 KiB per verified message (input,
	// verdict, aggregates, compressed), so these bound its growth (plus up
	// to two segments a partition: see SegmentBytes); with one they bound
	// the disk.
	Retention      time.Duration
	RetentionBytes int64
	RetentionCheck time.Duration
	// SegmentBytes is the size at which a partition's log rolls to a new
	// segment (Kafka's log.segment.bytes; default DefaultSegmentBytes).
	// Retention advances a partition's start batch by batch but frees
	// storage a whole segment at a time, so a partition holds up to one
	// segment more than RetentionBytes, and without a DataDir the segment
	// being filled may have as much again allocated ahead.
	SegmentBytes int64
}

// DefaultSegmentBytes is the embedded broker's segment size. kfake's own
// default is 100 MiB; without a DataDir its segments are in-memory buffers
// grown by doubling, so each partition then carried up to 28 MiB of slack
// and the broker spent its time copying and zeroing buffers of up to
// 128 MiB (docs/configuration.md has the measurement).
const DefaultSegmentBytes = 16 << 20

// Broker is an embedded single-node Kafka-compatible broker (franz-go's
// kfake): real Kafka protocol on TCP, consumer groups, transactions,
// persistence. It has no replication; use it for one-host deployments,
// demos and tests, and a real cluster (--brokers) otherwise.
type Broker struct {
	c        *kfake.Cluster
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// StartBroker starts an embedded broker.
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:9092"
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 65 << 20
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: port %q: %w", portStr, err)
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.RetentionBytes <= 0 {
		cfg.RetentionBytes = -1
	}
	if cfg.RetentionCheck <= 0 {
		cfg.RetentionCheck = 5 * time.Minute
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = DefaultSegmentBytes
	}
	mmb := strconv.Itoa(cfg.MaxMessageBytes)
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.BrokerConfigs(map[string]string{
			"message.max.bytes":   mmb,
			"log.retention.ms":    strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
			"log.retention.bytes": strconv.FormatInt(cfg.RetentionBytes, 10),
			"log.segment.bytes":   strconv.FormatInt(cfg.SegmentBytes, 10),
		}),
		kfake.ClusterID("authpipe-embedded"),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.MinSessionTimeout > 0 {
		opts = append(opts, kfake.GroupMinSessionTimeout(cfg.MinSessionTimeout))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b := &Broker{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	// kfake enforces retention on its own only for topics with their own
	// retention configs; the broker-wide values are applied here.
	go func() {
		defer close(b.done)
		t := time.NewTicker(cfg.RetentionCheck)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				c.ApplyRetention()
			case <-b.stop:
				return
			}
		}
	}()
	return b, nil
}

// Addrs returns the broker's listen addresses (host:port).
func (b *Broker) Addrs() []string { return b.c.ListenAddrs() }

// ApplyRetention drops the records that are past the retention limits now,
// rather than at the next RetentionCheck.
func (b *Broker) ApplyRetention() { b.c.ApplyRetention() }

// Close stops the broker, flushing its data directory.
func (b *Broker) Close() {
	b.stopOnce.Do(func() {
		close(b.stop)
		<-b.done
		b.c.Close()
	})
}
