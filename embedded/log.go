package embedded

import (
	"fmt"
	"io"
	"log"
	"strings"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
)

// serverLogger is the nats-server logger of every embedded server. It writes
// to out when logging is on, and always remembers the first fatal and the
// last error message so that a failed start can say why.
//
// Unlike the server's own logger, Fatalf never exits the process: nats-server
// calls Fatalf when JetStream or a listener fails to start, and an embedding
// program must get an error instead.
type serverLogger struct {
	out *log.Logger // nil = quiet

	mu          sync.Mutex
	fatal       string // first fatal message
	fatalFormat string // its format string, to classify it
	lastErr     string
}

var _ server.Logger = (*serverLogger)(nil)

func newServerLogger(w io.Writer, name string) *serverLogger {
	l := &serverLogger{}
	if w != nil {
		l.out = log.New(w, "["+name+"] ", log.LstdFlags|log.Lmicroseconds)
	}
	return l
}

func (l *serverLogger) print(level, format string, v []any) {
	if l.out != nil {
		l.out.Print(level + fmt.Sprintf(format, v...))
	}
}

func (l *serverLogger) Noticef(format string, v ...any) { l.print("[INF] ", format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.print("[WRN] ", format, v) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.print("[DBG] ", format, v) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.print("[TRC] ", format, v) }

func (l *serverLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	l.lastErr = msg
	l.mu.Unlock()
	l.print("[ERR] ", "%s", []any{msg})
}

func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	if l.fatal == "" {
		l.fatal, l.fatalFormat = msg, format
	}
	l.mu.Unlock()
	l.print("[FTL] ", "%s", []any{msg})
}

// fatalMsg returns the first fatal message, or "", and whether it is about
// JetStream (nats-server 2.15 logs "Can't start JetStream: %v").
func (l *serverLogger) fatalMsg() (msg string, jetStream bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal, strings.Contains(l.fatalFormat, "JetStream")
}

// reason returns the first fatal message, else the last error, else "".
func (l *serverLogger) reason() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatal != "" {
		return l.fatal
	}
	return l.lastErr
}
