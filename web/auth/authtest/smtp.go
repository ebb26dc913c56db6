// Package authtest runs a real SMTP listener for tests: it speaks enough
// SMTP (EHLO, MAIL, RCPT, DATA, QUIT) for net/smtp to deliver to it, and
// hands every received mail to the test.
package authtest

import (
	"bufio"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mail is one received message.
type Mail struct {
	From string
	To   []string
	Data string // headers and body as sent
}

// SMTPServer is a loopback SMTP listener.
type SMTPServer struct {
	Host  string
	Port  int
	mails chan Mail
	ln    net.Listener
	wg    sync.WaitGroup
}

// NewSMTPServer starts a listener, closed when the test ends.
func NewSMTPServer(tb testing.TB) *SMTPServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	s := &SMTPServer{Host: "127.0.0.1", Port: addr.Port, mails: make(chan Mail, 100), ln: ln}
	s.wg.Add(1)
	go s.accept()
	tb.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *SMTPServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.serve(c) }()
	}
}

func (s *SMTPServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := func(line string) { _, _ = w.WriteString(line + "\r\n"); _ = w.Flush() }
	reply("220 authtest ESMTP")
	var m Mail
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			reply("250 authtest")
		case strings.HasPrefix(cmd, "MAIL FROM:"):
			m = Mail{From: strings.Trim(strings.TrimSpace(line)[10:], "<> ")}
			reply("250 ok")
		case strings.HasPrefix(cmd, "RCPT TO:"):
			m.To = append(m.To, strings.Trim(strings.TrimSpace(line)[8:], "<> "))
			reply("250 ok")
		case cmd == "DATA":
			reply("354 end with .")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				b.WriteString(strings.TrimPrefix(l, "."))
			}
			m.Data = b.String()
			s.mails <- m
			reply("250 queued")
		case cmd == "QUIT":
			reply("221 bye")
			return
		case cmd == "RSET", cmd == "NOOP":
			reply("250 ok")
		default:
			reply("502 not implemented")
		}
	}
}

// Next returns the next received mail, failing the test after 10 s.
func (s *SMTPServer) Next(tb testing.TB) Mail {
	tb.Helper()
	select {
	case m := <-s.mails:
		return m
	case <-time.After(10 * time.Second):
		tb.Fatal("no mail arrived")
		return Mail{}
	}
}

var codePattern = regexp.MustCompile(`\b(\d{6})\b`)

// Code extracts the six-digit sign-in code from a mail.
func Code(tb testing.TB, m Mail) string {
	tb.Helper()
	found := codePattern.FindStringSubmatch(m.Data)
	if found == nil {
		tb.Fatalf("no code in mail:\n%s", m.Data)
	}
	return found[1]
}
