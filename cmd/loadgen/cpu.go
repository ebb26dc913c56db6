package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"taskstream/cmd/internal/machine"
)

// CPU accounting of a measurement window, to tell who used the two cores
// while messages were on their way: the load client (this process), the
// server, and everything else on the machine (other work sharing it, and
// for taskstream its redis-server).

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// this runs on (the kernel's ABI fixes it for /proc).
const clockTicks = 100

// cpuSample is the CPU used so far: by this process, by the server
// process, and by the whole machine (busy, and busy + idle), all in
// seconds.
type cpuSample struct {
	self, server, busy, total float64
	ok                        bool // every part could be read
}

// takeCPU samples the CPU times of this process, of pid and of the
// machine.
func takeCPU(pid int) cpuSample {
	var s cpuSample
	self, ok := machine.SelfCPU()
	if !ok {
		return s
	}
	s.self = self.Seconds()
	srv, err := procCPU(pid)
	if err != nil {
		return s
	}
	s.server = srv
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	s.busy, s.total, err = machineCPU(b)
	s.ok = err == nil
	return s
}

// procCPU is a process's user + system CPU time in seconds, from
// /proc/PID/stat.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// parseProcStat reads utime and stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and
// may hold spaces, so fields are counted after its closing one.
func parseProcStat(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat line without a command: %.60q", b)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat line with %d fields after the command", len(f))
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc stat utime %q stime %q", f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// machineCPU reads /proc/stat's "cpu" line: the seconds all CPUs spent
// busy and in all (busy + idle + iowait).
func machineCPU(stat []byte) (busy, total float64, err error) {
	line, _, _ := bytes.Cut(stat, []byte{'\n'})
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat starts %.40q", line)
	}
	// user nice system idle iowait irq softirq steal (guest is in user).
	var sum, idle uint64
	for k, v := range f[1:min(len(f), 9)] {
		x, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat field %d: %w", k+1, err)
		}
		sum += x
		if k == 3 || k == 4 { // idle, iowait
			idle += x
		}
	}
	return float64(sum-idle) / clockTicks, float64(sum) / clockTicks, nil
}

// cpuUse is the CPU of a window, in cores (CPU seconds per second).
type cpuUse struct {
	client, server, others float64
	wall                   time.Duration
}

// cpuBetween is what was used from a to b over wall.
func cpuBetween(a, b cpuSample, wall time.Duration) (cpuUse, bool) {
	if !a.ok || !b.ok || wall <= 0 {
		return cpuUse{}, false
	}
	sec := wall.Seconds()
	u := cpuUse{client: (b.self - a.self) / sec, server: (b.server - a.server) / sec, wall: wall}
	u.others = max(0, (b.busy-a.busy)/sec-u.client-u.server)
	return u, true
}
