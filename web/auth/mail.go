package auth

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/smtp"
	"strconv"
	"strings"
	"time"
)

// Mailer sends one plain-text mail.
type Mailer interface {
	Send(ctx context.Context, to, subject, body string) error
}

// LogMailer writes mails to the log instead of sending them: the embedded
// default, and any deployment without SMTP, shows sign-in codes there.
type LogMailer struct{ Logger *slog.Logger }

// Send logs the mail.
func (m LogMailer) Send(_ context.Context, to, subject, body string) error {
	m.Logger.Info("mail not sent (no SMTP configured); here it is", "to", to, "subject", subject, "body", strings.TrimSpace(body))
	return nil
}

// SMTPMailer sends mail over SMTP with net/smtp.
type SMTPMailer struct {
	Host     string
	Port     int    // default 587
	User     string // with Password: PLAIN auth (only over TLS, as net/smtp insists)
	Password string
	From     string
	// TLS is "starttls" (default: upgrade when the server offers it),
	// "tls" (implicit TLS, port 465) or "none".
	TLS     string
	Timeout time.Duration // default 10s
}

// Send delivers one mail.
func (m SMTPMailer) Send(ctx context.Context, to, subject, body string) error {
	port := m.Port
	if port == 0 {
		port = 587
	}
	timeout := m.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	addr := net.JoinHostPort(m.Host, strconv.Itoa(port))
	d := net.Dialer{Timeout: timeout}
	var conn net.Conn
	var err error
	if m.TLS == "tls" {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: &tls.Config{ServerName: m.Host}}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("smtp: connect %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	c, err := smtp.NewClient(conn, m.Host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp: greeting: %w", err)
	}
	defer c.Close()
	if m.TLS == "" || m.TLS == "starttls" {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(&tls.Config{ServerName: m.Host}); err != nil {
				return fmt.Errorf("smtp: starttls: %w", err)
			}
		}
	}
	if m.User != "" {
		if err := c.Auth(smtp.PlainAuth("", m.User, m.Password, m.Host)); err != nil {
			return fmt.Errorf("smtp: auth: %w", err)
		}
	}
	if err := c.Mail(m.From); err != nil {
		return fmt.Errorf("smtp: MAIL FROM: %w", err)
	}
	if err := c.Rcpt(to); err != nil {
		return fmt.Errorf("smtp: RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp: DATA: %w", err)
	}
	msg := "From: " + m.From + "\r\nTo: " + to + "\r\nSubject: " + subject +
		"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nDate: " +
		time.Now().UTC().Format(time.RFC1123Z) + "\r\n\r\n" + body
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("smtp: write: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp: end of data: %w", err)
	}
	return c.Quit()
}
