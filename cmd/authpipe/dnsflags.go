package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"

	"github.com/authpipe/authpipe/resolvercache"
)

// dnsFlags are the DNS options shared by every subcommand that verifies mail.
type dnsFlags struct {
	servers []string
	zone    string
	timeout time.Duration
	budget  time.Duration
	// cacheBytes is the DNS cache's byte budget (part of run's memory
	// bound).
	cacheBytes int64
	// maxInFlight bounds the queries on the wire to each server; 0 sizes
	// it from the messages verified at once (run) or takes the client's
	// default.
	maxInFlight int
	// log, when set (run), is told when a server stops or starts
	// answering.
	log *slog.Logger
}

func (d *dnsFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&d.servers, "resolver", nil, "send DNS queries to this `host:port` and no other; repeat it (or separate with commas) for more, asked in order, a server that stops answering asked last until it answers a probe (default: the servers in /etc/resolv.conf)")
	f.StringVar(&d.zone, "zone", "", "answer DNS from this RFC 1035 zone `file`, with no network at all")
	f.DurationVar(&d.timeout, "dns-timeout", 2*time.Second, "timeout for one DNS query")
	f.DurationVar(&d.budget, "dns-budget", 10*time.Second, "time all DNS work for one message may take; checks still waiting then report temperror")
	f.Int64Var(&d.cacheBytes, "dns-cache-bytes", 64<<20, "`bytes` the DNS cache may hold (answers, negative answers, errors)")
	f.IntVar(&d.maxInFlight, "dns-max-in-flight", 0, "DNS `queries` on the wire to each server at once; more wait for a slot (0: run gives 4 per message in flight, at least 1024; other commands 1024)")
}

// resolver builds the resolver the flags ask for, counting in m (nil: no
// metrics), with inFlight queries on the wire to each server at once
// unless --dns-max-in-flight says otherwise (0: the client's default).
// Caches run on the wall clock: --at changes what messages are judged
// against, not how long DNS answers stay fresh.
func (d *dnsFlags) resolver(m *resolvercache.Metrics, inFlight int) (resolvercache.Resolver, error) {
	r, _, err := d.resolverClient(m, inFlight)
	return r, err
}

// resolverClient is resolver that also returns the client behind the
// cache (nil with --zone), whose servers run reports.
func (d *dnsFlags) resolverClient(m *resolvercache.Metrics, inFlight int) (resolvercache.Resolver, *resolvercache.Client, error) {
	if d.timeout <= 0 {
		return nil, nil, usagef("--dns-timeout must be positive, got %s", d.timeout)
	}
	if d.maxInFlight < 0 {
		return nil, nil, usagef("--dns-max-in-flight must not be negative, got %d", d.maxInFlight)
	}
	if d.maxInFlight > 0 {
		inFlight = d.maxInFlight
	}
	if d.zone != "" {
		if len(d.servers) > 0 {
			return nil, nil, usagef("--zone and --resolver exclude each other")
		}
		z, err := resolvercache.LoadZoneFile(d.zone, resolvercache.WithZoneMetrics(m))
		if err != nil {
			return nil, nil, fmt.Errorf("load zone: %w", err)
		}
		return z, nil, nil
	}
	opts := []resolvercache.ClientOption{resolvercache.WithTimeout(d.timeout), resolvercache.WithMetrics(m)}
	if inFlight > 0 {
		opts = append(opts, resolvercache.WithMaxInFlight(inFlight))
	}
	for _, s := range d.servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, nil, usagef("--resolver: want host:port: %v", err)
		}
	}
	if len(d.servers) > 0 {
		opts = append(opts, resolvercache.WithUpstreams(d.servers...))
	}
	if log := d.log; log != nil {
		opts = append(opts, resolvercache.WithHealthFunc(func(server string, answering bool, err error) {
			if answering {
				log.Info("DNS server answering again", "server", server)
				return
			}
			log.Warn("DNS server not answering: the other servers are asked first, and it gets a probe every "+resolvercache.UpstreamHoldDown.String()+"; with none answering, verdicts say temperror",
				"server", server, "err", err)
		}))
	}
	c, err := resolvercache.NewClient(opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("dns client: %w", err)
	}
	cache, err := resolvercache.NewCache(c, resolvercache.WithMaxBytes(d.cacheBytes), resolvercache.WithCacheMetrics(m))
	if err != nil {
		return nil, nil, usagef("--dns-cache-bytes: %v", err)
	}
	return cache, c, nil
}

// probeDNS asks the resolver once, at start, for a name under .invalid
// (RFC 6761 6.4: a recursive server answers NXDOMAIN at once, asking
// nobody), and warns when the servers do not answer, or answer it with an
// error (REFUSED from a server whose access list leaves this host out,
// SERVFAIL or REFUSED from one that is not a recursive resolver): every
// verdict would then say temperror, and the log says why before the
// metrics do. It asks with the client's timeout and retries, and gives up
// with ctx.
func probeDNS(ctx context.Context, r resolvercache.Resolver, servers []string, log *slog.Logger) {
	_, err := r.Lookup(ctx, "authpipe-start-probe.invalid", dns.TypeTXT)
	var re *resolvercache.Error
	if !errors.As(err, &re) || ctx.Err() != nil {
		return
	}
	switch re.Kind {
	case resolvercache.KindTimeout, resolvercache.KindNetwork:
		log.Warn("DNS servers not answering: verdicts will say temperror until they do (see --resolver)", "servers", servers, "err", err)
	case resolvercache.KindServFail:
		log.Warn("DNS servers answer with an error a recursive resolver does not give for this name: is it a recursive resolver that serves this host (access list)? Verdicts will say temperror (see --resolver)",
			"servers", servers, "rcode", dns.RcodeToString[re.Rcode], "err", err)
	}
}
