package dnstest

import (
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMmsghdrLayout: mmsghdr is the kernel's struct mmsghdr, a msghdr
// and an unsigned int, padded to the msghdr's alignment.
func TestMmsghdrLayout(t *testing.T) {
	align := unsafe.Alignof(unix.Msghdr{})
	want := (unix.SizeofMsghdr + 4 + align - 1) / align * align
	if got := unsafe.Sizeof(mmsghdr{}); got != want {
		t.Fatalf("mmsghdr is %d octets, want %d", got, want)
	}
	if off := unsafe.Offsetof(mmsghdr{}.n); off != unix.SizeofMsghdr {
		t.Fatalf("msg_len at %d, want %d", off, unix.SizeofMsghdr)
	}
}

// TestRecvBatch reads datagrams with recvmmsg: their octets, sources and
// receive timestamps.
func TestRecvBatch(t *testing.T) {
	u, addr, err := listenUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := time.Now()
	for _, m := range []string{"one", "two", "three"} {
		if _, err := c.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	r := newRecvBatch()
	var got []string
	for deadline := time.Now().Add(5 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
		n, err := r.recv(u.fd)
		if err == unix.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			msg, from := r.msg(i)
			if from == nil || sockaddrPort(from) != c.LocalAddr().(*net.UDPAddr).Port {
				t.Errorf("source %+v, client %v", from, c.LocalAddr())
			}
			ts, ok := r.stamp(i)
			if !ok {
				t.Errorf("no receive timestamp")
			} else if d := ts.Sub(sent); d < -time.Second || d > 5*time.Second {
				t.Errorf("receive timestamp %v, sent at %v", ts, sent)
			}
			got = append(got, string(msg))
		}
	}
	if len(got) != 3 || got[0] != "one" || got[2] != "three" {
		t.Fatalf("read %q", got)
	}
}

// sockaddrPort is the port of sa, which the kernel stores in network
// byte order.
func sockaddrPort(sa *unix.RawSockaddrInet4) int {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return int(p[0])<<8 | int(p[1])
}
