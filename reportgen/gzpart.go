package reportgen

import (
	"compress/gzip"
	"io"
	"time"
)

// gzipOverhead bounds the gzip header, trailer and final block marker.
const gzipOverhead = 64

// countWriter counts the octets written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// gzPart is the gzip file of one report part as it is written. The
// builders of both report kinds split a report before a destination's size
// cap is crossed; gzPart gives them a safe upper bound on the file's final
// size without compressing twice: what was emitted so far, plus the input
// written since the last flush (pending) and the input still to come,
// counted as if incompressible.
type gzPart struct {
	cw      *countWriter
	gz      *gzip.Writer
	pending int64 // octets written to gz since its last flush
}

// open starts a part writing to out; name is the gzip header's file name
// ("" for none).
func (p *gzPart) open(out io.Writer, name string, modTime time.Time) {
	p.cw = &countWriter{w: out}
	p.gz, _ = gzip.NewWriterLevel(p.cw, gzip.DefaultCompression)
	p.gz.Name = name
	p.gz.ModTime = modTime
	p.pending = 0
}

// isOpen reports whether a part is being written.
func (p *gzPart) isOpen() bool { return p.gz != nil }

// bound is the largest size the file can reach after n more input octets
// and a closing tail of tail octets.
func (p *gzPart) bound(n, tail int64) int64 { return sizeBound(p.cw.n, p.pending+n+tail) }

// sizeBound is the largest size a gzip file can reach that has emitted
// octets so far and input more octets to compress: deflate expands
// incompressible input by at most 5 octets per 64 KiB stored block.
func sizeBound(emitted, input int64) int64 { return emitted + input + input/8192 + gzipOverhead }

// write compresses b into the part.
func (p *gzPart) write(b []byte) error {
	_, err := p.gz.Write(b)
	p.pending += int64(len(b))
	return err
}

// flush pushes the pending input through the compressor, so that bound
// measures it exactly from then on.
func (p *gzPart) flush() error {
	p.pending = 0
	return p.gz.Flush()
}

// finish writes tail, closes the gzip stream and the part's writer when it
// is an io.Closer, and returns the file's size.
func (p *gzPart) finish(tail string) (int64, error) {
	if _, err := io.WriteString(p.gz, tail); err != nil {
		return 0, err
	}
	if err := p.gz.Close(); err != nil {
		return 0, err
	}
	size := p.cw.n
	if c, ok := p.cw.w.(io.Closer); ok {
		if err := c.Close(); err != nil {
			return 0, err
		}
	}
	*p = gzPart{}
	return size, nil
}
