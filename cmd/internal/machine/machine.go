// Package machine owns what the measuring tools (cmd/loadgen,
// cmd/jobload) print about the machine a run shared: its load average
// before and after, so figures from a busy minute read as such, and the
// CPU time the tool itself used.
package machine

import (
	"os"
	"strings"
)

// LoadAverage is /proc/loadavg's first three fields (the 1, 5 and 15
// minute load averages), or "unknown" where there is no such file.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
