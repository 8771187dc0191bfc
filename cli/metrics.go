package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// metricsFlagUsage is the help of --metrics-addr.
const metricsFlagUsage = "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (path /metrics; default off)"

// metricsEndpoint is an OpenTelemetry meter provider whose metrics a
// Prometheus endpoint serves: the OpenTelemetry Prometheus exporter on a
// registry of its own (with the Go runtime's and the process's collectors),
// behind an HTTP server on the --metrics-addr address.
type metricsEndpoint struct {
	mp   *sdkmetric.MeterProvider
	srv  *http.Server
	addr string // where it listens, port resolved
	done chan struct{}
}

// startMetrics listens on addr and serves /metrics until close. service
// names the process in the target_info metric (service.name).
func startMetrics(addr, service string) (*metricsEndpoint, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: the Prometheus exporter: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", service))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = mp.Shutdown(context.Background())
		return nil, withCode(ExitUsage, fmt.Errorf("--metrics-addr %s: %w", addr, err))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "esnats metrics: /metrics")
	})
	m := &metricsEndpoint{
		mp:   mp,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		_ = m.srv.Serve(ln) // http.ErrServerClosed after close
	}()
	return m, nil
}

// URL is the endpoint's address for people.
func (m *metricsEndpoint) URL() string { return "http://" + m.addr + "/metrics" }

// close stops the HTTP server and the meter provider.
func (m *metricsEndpoint) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
	_ = m.mp.Shutdown(ctx)
}

// serverMetrics registers, on mp, gauges and counters of an embedded NATS
// server read in process at each collection (no network): its connections
// and traffic, and its JetStream streams and consumers (the figures of the
// /varz and /jsz monitoring endpoints). See docs/observability.md.
func serverMetrics(mp metric.MeterProvider, s *server.Server) error {
	m := mp.Meter("github.com/esnats/esnats/cli")
	var errs []error
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	var (
		conns       = gauge("nats.server.connections", "{connection}", "Client connections open.")
		subs        = gauge("nats.server.subscriptions", "{subscription}", "Subscriptions.")
		inMsgs      = counter("nats.server.received.messages", "{message}", "Messages received by the server.")
		outMsgs     = counter("nats.server.sent.messages", "{message}", "Messages sent by the server.")
		inBytes     = counter("nats.server.received", "By", "Bytes received by the server.")
		outBytes    = counter("nats.server.sent", "By", "Bytes sent by the server.")
		slow        = counter("nats.server.slow_consumers", "{client}", "Clients disconnected for being slow consumers.")
		jsStreams   = gauge("nats.jetstream.streams", "{stream}", "JetStream streams.")
		jsConsumers = gauge("nats.jetstream.consumers", "{consumer}", "JetStream consumers.")
		jsMsgs      = gauge("nats.jetstream.messages", "{message}", "Messages stored in JetStream.")
		jsBytes     = gauge("nats.jetstream.size", "By", "Bytes stored in JetStream.")
		apiTotal    = counter("nats.jetstream.api.requests", "{request}", "JetStream API requests.")
		apiErrors   = counter("nats.jetstream.api.errors", "{request}", "JetStream API requests that failed.")
		stMsgs      = gauge("nats.jetstream.stream.messages", "{message}", "Messages in the stream.")
		stBytes     = gauge("nats.jetstream.stream.size", "By", "Bytes in the stream.")
		stSubjects  = gauge("nats.jetstream.stream.subjects", "{subject}", "Distinct subjects in the stream (aggregates, in an esnats store).")
		stConsumers = gauge("nats.jetstream.stream.consumers", "{consumer}", "Consumers of the stream.")
		stLastSeq   = gauge("nats.jetstream.stream.last_sequence", "{sequence}", "The stream's last sequence.")
		coPending   = gauge("nats.jetstream.consumer.pending", "{message}", "Messages matching the consumer not yet delivered (num_pending).")
		coAck       = gauge("nats.jetstream.consumer.ack_pending", "{message}", "Messages delivered and not yet acknowledged (num_ack_pending).")
		coRedeliv   = gauge("nats.jetstream.consumer.redelivered", "{message}", "Messages delivered more than once and not yet acknowledged (num_redelivered).")
		coWaiting   = gauge("nats.jetstream.consumer.waiting", "{request}", "Pull requests waiting (num_waiting).")
		coFloor     = gauge("nats.jetstream.consumer.ack_floor", "{sequence}", "Stream sequence of the consumer's acknowledgement floor: its position.")
	)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if v, err := s.Varz(nil); err == nil {
			o.ObserveInt64(conns, int64(v.Connections))
			o.ObserveInt64(subs, int64(v.Subscriptions))
			o.ObserveInt64(inMsgs, v.InMsgs)
			o.ObserveInt64(outMsgs, v.OutMsgs)
			o.ObserveInt64(inBytes, v.InBytes)
			o.ObserveInt64(outBytes, v.OutBytes)
			o.ObserveInt64(slow, v.SlowConsumers)
		}
		jsz, err := s.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true})
		if err != nil {
			return nil // JetStream off or shutting down: nothing to observe
		}
		o.ObserveInt64(jsStreams, int64(jsz.Streams))
		o.ObserveInt64(jsConsumers, int64(jsz.Consumers))
		o.ObserveInt64(jsMsgs, int64(jsz.Messages))
		o.ObserveInt64(jsBytes, int64(jsz.Bytes))
		o.ObserveInt64(apiTotal, int64(jsz.API.Total))
		o.ObserveInt64(apiErrors, int64(jsz.API.Errors))
		for _, acc := range jsz.AccountDetails {
			for _, st := range acc.Streams {
				sa := metric.WithAttributes(attribute.String("nats.stream", st.Name))
				o.ObserveInt64(stMsgs, int64(st.State.Msgs), sa)
				o.ObserveInt64(stBytes, int64(st.State.Bytes), sa)
				o.ObserveInt64(stSubjects, int64(st.State.NumSubjects), sa)
				o.ObserveInt64(stConsumers, int64(st.State.Consumers), sa)
				o.ObserveInt64(stLastSeq, int64(st.State.LastSeq), sa)
				for _, ci := range st.Consumer {
					if ci == nil {
						continue
					}
					ca := metric.WithAttributes(attribute.String("nats.stream", st.Name), attribute.String("nats.consumer", ci.Name))
					o.ObserveInt64(coPending, int64(ci.NumPending), ca)
					o.ObserveInt64(coAck, int64(ci.NumAckPending), ca)
					o.ObserveInt64(coRedeliv, int64(ci.NumRedelivered), ca)
					o.ObserveInt64(coWaiting, int64(ci.NumWaiting), ca)
					o.ObserveInt64(coFloor, int64(ci.AckFloor.Stream), ca)
				}
			}
		}
		return nil
	}, conns, subs, inMsgs, outMsgs, inBytes, outBytes, slow, jsStreams, jsConsumers, jsMsgs, jsBytes, apiTotal, apiErrors,
		stMsgs, stBytes, stSubjects, stConsumers, stLastSeq, coPending, coAck, coRedeliv, coWaiting, coFloor)
	return err
}
