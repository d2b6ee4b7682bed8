package main

import (
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/emersion/go-smtp"
)

// sunkMail is one message accepted by a mailSink.
type sunkMail struct {
	From string
	To   []string
	Data []byte
}

// mailSink is an SMTP server on loopback that accepts every message and
// keeps it in memory: the demo's stand-in for the report receivers' MX
// (and the tests' too).
type mailSink struct {
	srv  *smtp.Server
	addr string

	port int

	mu   sync.Mutex
	msgs []sunkMail
}

// startMailSink listens on 127.0.0.1 (port 0: any free port).
func startMailSink(addr string) (*mailSink, error) {
	s := &mailSink{}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	s.srv.Domain = "sink.localhost"
	s.srv.MaxMessageBytes = 64 << 20
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mail sink: %w", err)
	}
	s.addr, s.port = l.Addr().String(), l.Addr().(*net.TCPAddr).Port
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Addr returns the listen address (host:port).
func (s *mailSink) Addr() string { return s.addr }

// Port returns the listen port.
func (s *mailSink) Port() int { return s.port }

// Messages returns the messages accepted so far.
func (s *mailSink) Messages() []sunkMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sunkMail(nil), s.msgs...)
}

// Close stops the server.
func (s *mailSink) Close() error { return s.srv.Close() }

type sinkSession struct {
	s    *mailSink
	from string
	to   []string
}

func (ss *sinkSession) Reset()        { ss.from, ss.to = "", nil }
func (ss *sinkSession) Logout() error { return nil }
func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	return nil
}
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, sunkMail{From: ss.from, To: ss.to, Data: b})
	ss.s.mu.Unlock()
	return nil
}
