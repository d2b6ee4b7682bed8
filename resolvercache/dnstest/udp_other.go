//go:build !linux

package dnstest

import (
	"net"

	"github.com/miekg/dns"
)

// Elsewhere than on Linux (udp_linux.go), miekg/dns's server serves UDP
// as well as TCP, with the same handler: a goroutine per query, sleeping
// out any delay.
type udpServer struct {
	pc  net.PacketConn
	srv *dns.Server
}

func listenUDP() (*udpServer, string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(udpReadBuffer)
	}
	return &udpServer{pc: pc}, pc.LocalAddr().String(), nil
}

func (u *udpServer) start(s *Server) error {
	u.srv = &dns.Server{PacketConn: u.pc, Handler: dns.HandlerFunc(s.handle)}
	started := make(chan error, 1)
	u.srv.NotifyStartedFunc = func() { started <- nil }
	go func() {
		if err := u.srv.ActivateAndServe(); err != nil {
			started <- err
		}
	}()
	return <-started
}

func (u *udpServer) close() {
	if u.srv != nil {
		_ = u.srv.Shutdown()
		return
	}
	_ = u.pc.Close()
}

func (u *udpServer) delayChanged() {}
