package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how far long work (a rebuild, a benchmark) has come: a
// progress bar on a terminal, or a line every few seconds otherwise (logs,
// CI, tests), on w (stderr, so that --json output stays clean).
type progress struct {
	bar      *progressbar.ProgressBar
	w        io.Writer
	what     string
	total    int64
	lastLine time.Time
	every    time.Duration
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	if s, ok := w.(*syncWriter); ok {
		w = s.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, what string, total int64, quiet bool) *progress {
	p := &progress{w: w, what: what, total: total, every: 2 * time.Second}
	if quiet {
		p.w = io.Discard
		return p
	}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("ev"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// set moves the progress to done (of total; total may grow).
func (p *progress) set(done, total int64) {
	if total > 0 && total != p.total {
		p.total = total
		if p.bar != nil {
			p.bar.ChangeMax64(total)
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(done)
		return
	}
	if now := time.Now(); now.Sub(p.lastLine) >= p.every {
		p.lastLine = now
		fmt.Fprintf(p.w, "%s: %d/%d\n", p.what, done, p.total)
	}
}

// finish ends the bar.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintln(p.w)
	}
}
