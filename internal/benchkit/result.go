package benchkit

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what Run measured of one workload. It marshals to JSON with the
// lower-case keys in its tags, all of them always present (0 for what was not
// measured); durations are integers in nanoseconds.
type Result struct {
	// Workload is the workload's name, Unit what one operation is, and
	// EventsPerOp the events one operation writes or reads.
	Workload    string `json:"workload"`
	Unit        string `json:"unit"`
	EventsPerOp int    `json:"events_per_op"`
	// Concurrency is the number of operations in flight on the esnats side:
	// the writers of append-concurrent (whose raw side pipelines up to 1024
	// publishes), 1 for the other workloads.
	Concurrency int `json:"concurrency"`
	// Replicas is the store's replication factor.
	Replicas int `json:"replicas"`
	// GroupCommit is how the store sent concurrent single-event appends at
	// the end of the run (stream.Store.GroupCommitMode: with the default
	// mode, auto, what it chose from its measurements), for the workloads
	// it matters to (append-concurrent, append-async); empty for others.
	GroupCommit string `json:"group_commit,omitempty"`
	// Rounds is how many times the sides took turns.
	Rounds int `json:"rounds"`
	// Stream is the name of the store's stream (deleted after the run
	// unless Options.Keep).
	Stream string `json:"stream"`
	// Raw and Esnats are the two sides.
	Raw    Side `json:"raw"`
	Esnats Side `json:"esnats"`
	// Ratio is esnats ops/s ÷ raw ops/s over the whole run: 1.0 means as
	// fast as raw JetStream, higher is better.
	Ratio float64 `json:"ratio"`
	// RatioMedian is the median over the rounds of the same ratio, each
	// round's sides having run back to back: less sensitive to a pause that
	// hit one side only.
	RatioMedian float64 `json:"ratio_median"`
}

// Side is what Run measured of one side of a workload.
type Side struct {
	// Op names the operation the side runs.
	Op string `json:"op"`
	// Ops is the number of timed operations; WarmupOps the untimed ones
	// run before them (included in what the side stored).
	Ops       int `json:"ops"`
	WarmupOps int `json:"warmup_ops"`
	// Elapsed is the time the timed operations took: the sum over the
	// rounds of each turn's wall time (for projection-catchup and
	// projection-kv, from creating the consumer, or starting the runner, to
	// the last event handled: acknowledged, or applied by the model).
	Elapsed time.Duration `json:"elapsed_ns"`
	// OpsPerSec is Ops / Elapsed, EventsPerSec the same in events.
	OpsPerSec    float64 `json:"ops_per_sec"`
	EventsPerSec float64 `json:"events_per_sec"`
	// Mean, P50 and P99 are the latency of one operation (the mean exact,
	// quantiles within 1.6%); 0 for projection-catchup and projection-kv,
	// whose operations (events) are not timed one by one.
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	// BytesPerOp and AllocsPerOp are the heap allocations of the whole
	// process per operation during the side's turns: with an embedded
	// server they include the server's work.
	BytesPerOp  int64 `json:"bytes_per_op"`
	AllocsPerOp int64 `json:"allocs_per_op"`
}

// Columns returns the headings of the table that Row fills, one per cell.
func Columns() []string {
	return []string{"workload", "unit", "raw/s", "esnats/s", "esnats/raw", "raw p50", "esnats p50", "raw p99", "esnats p99"}
}

// Row returns r as the cells of a table row under Columns: throughputs in
// operations (Unit) per second, the ratio over the whole run, latencies
// ("-" where not measured).
func (r Result) Row() []string {
	unit := r.Unit
	if r.Concurrency > 1 {
		unit += " x" + strconv.Itoa(r.Concurrency)
	}
	if r.GroupCommit != "" {
		unit += " (" + r.GroupCommit + ")"
	}
	return []string{
		r.Workload,
		unit,
		formatRate(r.Raw.OpsPerSec),
		formatRate(r.Esnats.OpsPerSec),
		strconv.FormatFloat(r.Ratio, 'f', 2, 64),
		formatLatency(r.Raw.P50),
		formatLatency(r.Esnats.P50),
		formatLatency(r.Raw.P99),
		formatLatency(r.Esnats.P99),
	}
}

// WriteTable writes results as a table aligned with spaces: a heading line
// (Columns) and one line (Row) per result.
func WriteTable(w io.Writer, results ...Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if _, err := fmt.Fprintln(tw, strings.Join(Columns(), "\t")); err != nil {
		return err
	}
	for _, r := range results {
		if _, err := fmt.Fprintln(tw, strings.Join(r.Row(), "\t")); err != nil {
			return err
		}
	}
	return tw.Flush()
}

// formatRate writes a rate with 3 significant digits at least.
func formatRate(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// formatLatency writes a duration with 3 significant digits.
func formatLatency(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	var v float64
	var unit string
	switch {
	case d >= time.Second:
		v, unit = d.Seconds(), "s"
	case d >= time.Millisecond:
		v, unit = float64(d)/float64(time.Millisecond), "ms"
	case d >= time.Microsecond:
		v, unit = float64(d)/float64(time.Microsecond), "µs"
	default:
		return strconv.FormatInt(int64(d), 10) + "ns"
	}
	prec := 0
	switch {
	case v < 10:
		prec = 2
	case v < 100:
		prec = 1
	}
	return strconv.FormatFloat(v, 'f', prec, 64) + unit
}
