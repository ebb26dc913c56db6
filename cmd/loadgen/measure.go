package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"taskstream/wire"
)

// Memory is a process's memory at one moment.
type Memory struct {
	RSS, HWM   int64 // bytes: resident now, and the peak (VmHWM)
	HeapInuse  int64 // in-process only: Go heap in use
	Goroutines int   // in-process only
}

// readMemory reads pid's VmRSS and VmHWM from /proc (pid 0: this process,
// with the Go runtime's own figures too).
func readMemory(pid int) (Memory, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	f, err := os.Open(path)
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	m, err := parseStatus(f)
	if err != nil {
		return m, fmt.Errorf("%s: %w", path, err)
	}
	if pid == 0 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		m.HeapInuse, m.Goroutines = int64(ms.HeapInuse), runtime.NumGoroutine()
	}
	return m, nil
}

// parseStatus reads VmRSS and VmHWM ("VmRSS:   12345 kB") from a
// /proc/PID/status file.
func parseStatus(r io.Reader) (Memory, error) {
	var m Memory
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) != 2 || fields[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", key, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		if key == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.HWM = kb << 10
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if found < 2 {
		return m, fmt.Errorf("no VmRSS/VmHWM lines")
	}
	return m, nil
}

// eventStamp finds the name, seq and ts of a protocol event frame without
// decoding the whole frame (the clients share the CPU with the server, so
// they do as little as they can). The frame's fields come in a fixed
// order — type, group, seq, epoch, event, data, ts — so the first "seq"
// and "event" and the last "ts" are the frame's own, whatever the data.
// A lean frame (taskstream.v2: no type, ts in base 36, "skipped" only
// after ts, never in a chat room) keeps that order.
func eventStamp(frame []byte) (name string, seq int64, ts time.Time, ok bool) {
	lean := bytes.HasPrefix(frame, []byte(`{"group":`))
	if !lean && !bytes.HasPrefix(frame, []byte(`{"type":"event"`)) {
		return "", 0, time.Time{}, false
	}
	field := func(key string, last bool) []byte {
		i := bytes.Index(frame, []byte(key))
		if last {
			i = bytes.LastIndex(frame, []byte(key))
		}
		if i < 0 {
			return nil
		}
		rest := frame[i+len(key):]
		end := bytes.IndexAny(rest, `",}`)
		if end < 0 {
			return nil
		}
		return rest[:end]
	}
	seq, err := strconv.ParseInt(string(field(`"seq":`, false)), 10, 64)
	if err != nil {
		return "", 0, time.Time{}, false
	}
	if lean {
		ts, err = wire.ParseLeanTS(string(field(`"ts":"`, true)))
	} else {
		ts, err = time.Parse(time.RFC3339Nano, string(field(`"ts":"`, true)))
	}
	if err != nil {
		return "", 0, time.Time{}, false
	}
	name = string(field(`"event":"`, false))
	return name, seq, ts, name != ""
}
