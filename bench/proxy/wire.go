package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// The client's first byte on a connection picks what the echo server does.
const (
	// modeEcho: echo every byte back until EOF.
	modeEcho = 'E'
	// modeDownload: stream the pattern to the client until it closes.
	modeDownload = 'D'
)

// The download stream repeats 0, 1, ..., patternPeriod-1, so the client can
// check every byte at any offset. A chunk is a whole number of periods.
const (
	patternPeriod = 251
	chunkSize     = patternPeriod * 256 // 64,256 bytes
)

var pattern = func() []byte {
	b := make([]byte, 2*chunkSize+patternPeriod)
	for i := range b {
		b[i] = byte(i % patternPeriod)
	}
	return b
}()

var echoBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func listenTCP(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// serveEcho runs the echo server on l until l is closed.
func serveEcho(l net.Listener) error {
	return accept(l, handleEcho)
}

func handleEcho(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeEcho:
		bp := echoBufs.Get().(*[]byte)
		defer echoBufs.Put(bp)
		for {
			n, err := c.Read(*bp)
			if n > 0 {
				if _, werr := c.Write((*bp)[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case modeDownload:
		chunk := pattern[:chunkSize]
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}
}

// serveRelay is the floor of the comparison: a plain TCP relay to up,
// io.Copy each way, half-closing at EOF, no TLS, no deadlines, no metrics.
func serveRelay(l net.Listener, up string) error {
	return accept(l, func(c net.Conn) {
		u, err := net.DialTimeout("tcp", up, 5*time.Second)
		if err != nil {
			c.Close()
			return
		}
		done := make(chan struct{})
		go func() {
			relayHalf(u, c)
			close(done)
		}()
		relayHalf(c, u)
		<-done
		c.Close()
		u.Close()
	})
}

func relayHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err == nil { // EOF
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			return
		}
	}
	dst.Close()
	src.Close()
}

// accept hands each connection accepted on l to handle in a goroutine,
// until l is closed.
func accept(l net.Listener, handle func(net.Conn)) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go handle(c)
	}
}
