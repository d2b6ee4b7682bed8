package main

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo says which authpipe this is: the module version ("(devel)" for
// a build from a checkout), the VCS revision and whether the tree had
// changes, and the Go release, as the Go toolchain stamped them into the
// binary (debug.ReadBuildInfo).
type buildInfo struct {
	version, revision, goVersion string
	modified                     bool
}

func readBuildInfo() buildInfo {
	b := buildInfo{version: "(devel)", revision: "unknown", goVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if v := bi.Main.Version; v != "" {
		b.version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.revision = s.Value
		case "vcs.modified":
			b.modified = s.Value == "true"
		}
	}
	return b
}

// String is --version's text.
func (b buildInfo) String() string {
	rev := b.revision
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if b.modified {
		rev += " (modified)"
	}
	return b.version + ", revision " + rev + ", " + b.goVersion
}

// collector is the authpipe_build_info gauge: always 1, the build in its
// labels, so that dashboards can tell instances of a fleet apart by build.
func (b buildInfo) collector() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "authpipe_build_info",
		Help: "Always 1; the labels say which build of authpipe runs: version (the module's, (devel) for a checkout), revision (VCS, with +modified for a changed tree), goversion.",
	}, []string{"version", "revision", "goversion"})
	rev := b.revision
	if b.modified {
		rev += "+modified"
	}
	g.WithLabelValues(b.version, rev, b.goVersion).Set(1)
	return g
}
