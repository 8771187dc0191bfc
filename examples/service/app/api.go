package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/examples/service/cart"
	"github.com/esnats/esnats/stream"
)

// Version is the version of the micro services (semantic versioning), shown
// by `nats micro info`.
const Version = "1.0.0"

// Service names, as `nats micro ls` shows them.
const (
	APIService   = "cart"
	ViewsService = "cart-views"
)

// AddItem is the request of <Prefix>.add: put Quantity units of SKU in
// Cart, creating the cart with its first item.
type AddItem struct {
	Cart     string `json:"cart"`
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// RemoveItem is the request of <Prefix>.remove: take the line of SKU out of
// Cart.
type RemoveItem struct {
	Cart string `json:"cart"`
	SKU  string `json:"sku"`
}

// CartRef names a cart: the request of <Prefix>.checkout, <Prefix>.get and
// <Prefix>.summary.
type CartRef struct {
	Cart string `json:"cart"`
}

// CartState is a cart as the event store has it: the reply to the commands
// (the state they left the cart in) and to <Prefix>.get. Version counts the
// cart's events; a read model that shows this version (Summary.Version) has
// caught up with the command.
type CartState struct {
	Cart       string         `json:"cart"`
	Version    uint64         `json:"version"`
	Items      map[string]int `json:"items"`
	Quantity   int            `json:"quantity"`
	CheckedOut bool           `json:"checked_out"`
}

// ErrorBody is the body of an error reply; its Code and Error are also in
// the Nats-Service-Error-Code and Nats-Service-Error headers.
type ErrorBody struct {
	Code  int    `json:"code"`
	Error string `json:"error"`
}

// Error classes of the replies.
var (
	// errBadRequest: the request is malformed (400).
	errBadRequest = errors.New("bad request")
	// errUnknownCart: the cart has no events (404).
	errUnknownCart = errors.New("unknown cart")
)

// Examples of the requests, shown in errors about malformed ones and in
// the endpoints' metadata.
const (
	exampleAdd    = `{"cart":"alice","sku":"apple","quantity":2}`
	exampleRemove = `{"cart":"alice","sku":"apple"}`
	exampleCart   = `{"cart":"alice"}`
)

// Serve runs the cart API on nc until ctx ends: it creates (or opens) the
// event store and the snapshot bucket, waiting while JetStream is not
// available, then registers the micro service APIService with the
// endpoints <Prefix>.add, .remove, .checkout and .get, and answers them.
// Each command runs through an aggregate.Repository: load the cart, check
// the command against its rules, append its events atomically with the
// concurrency check, retrying on a conflict.
//
// Requests on one endpoint are handled one at a time per process (the micro
// framework calls a handler from its subscription); run more processes to
// handle more at once: they share the work through the service's queue
// group. When ctx ends Serve stops the service and returns nil; requests
// in hand still finish (within Config.RequestTimeout) and are answered if
// the caller then drains the connection rather than closing it, as the
// mains do (see Drain). Errors: an invalid cfg, a setup that cannot succeed
// (see NewStore), the service failing to register, or the connection
// closing (the service then stops).
func Serve(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("service", APIService)
	var store *stream.Store
	var repo *aggregate.Repository[*cart.Cart]
	err := setupRetry(ctx, log, "event store "+cfg.Store, func(ctx context.Context) error {
		s, err := NewStore(ctx, js, cfg)
		if err != nil {
			return err
		}
		snaps, err := newSnapshots(ctx, js, cfg)
		if err != nil {
			return err
		}
		store = s
		repo, err = aggregate.NewRepository(aggregate.Config[*cart.Cart]{
			Store:       s,
			Type:        cart.AggregateType,
			New:         cart.New,
			Snapshots:   snaps,
			MaxAttempts: cfg.MaxAttempts,
			Logger:      log,
		})
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the server
		}
		return err
	}
	defer repo.Flush()

	a := &api{cfg: cfg, repo: repo}
	svc, done, err := addService(nc, cfg, log, APIService, "esnats service example: shopping cart commands", []endpoint{
		{"add", exampleAdd, a.add},
		{"remove", exampleRemove, a.remove},
		{"checkout", exampleCart, a.checkout},
		{"get", exampleCart, a.get},
	}, context.WithoutCancel(ctx)) // requests in hand finish after ctx ends
	if err != nil {
		return err
	}
	log.Info("serving", "subjects", cfg.Prefix+".{add,remove,checkout,get}", "store", store.Name(), "replicas", cfg.Replicas)
	return waitService(ctx, svc, done, log)
}

// api handles the commands.
type api struct {
	cfg  Config
	repo *aggregate.Repository[*cart.Cart]
}

func (a *api) add(ctx context.Context, data []byte) (any, error) {
	var req AddItem
	if err := decode(a.cfg.subject("add"), data, &req, exampleAdd); err != nil {
		return nil, err
	}
	if err := required(a.cfg.subject("add"), "cart", req.Cart, exampleAdd); err != nil {
		return nil, err
	}
	return a.update(ctx, req.Cart, false, func(c *cart.Cart) error { return c.AddItem(req.SKU, req.Quantity) })
}

func (a *api) remove(ctx context.Context, data []byte) (any, error) {
	var req RemoveItem
	if err := decode(a.cfg.subject("remove"), data, &req, exampleRemove); err != nil {
		return nil, err
	}
	if err := required(a.cfg.subject("remove"), "cart", req.Cart, exampleRemove); err != nil {
		return nil, err
	}
	if err := required(a.cfg.subject("remove"), "sku", req.SKU, exampleRemove); err != nil {
		return nil, err
	}
	return a.update(ctx, req.Cart, true, func(c *cart.Cart) error { return c.RemoveItem(req.SKU) })
}

func (a *api) checkout(ctx context.Context, data []byte) (any, error) {
	id, err := cartRef(a.cfg.subject("checkout"), data)
	if err != nil {
		return nil, err
	}
	return a.update(ctx, id, true, (*cart.Cart).Checkout)
}

func (a *api) get(ctx context.Context, data []byte) (any, error) {
	id, err := cartRef(a.cfg.subject("get"), data)
	if err != nil {
		return nil, err
	}
	c, err := a.repo.Load(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.Version() == 0 {
		return nil, unknownCart(id)
	}
	return stateOf(id, c), nil
}

// update runs cmd on the cart through the repository and returns the state
// it left the cart in. mustExist refuses a cart with no events (404).
func (a *api) update(ctx context.Context, id string, mustExist bool, cmd func(*cart.Cart) error) (CartState, error) {
	var st CartState
	err := a.repo.Update(ctx, id, func(c *cart.Cart) error {
		if mustExist && c.Version() == 0 {
			return unknownCart(id)
		}
		if err := cmd(c); err != nil {
			return err
		}
		st = stateOf(id, c) // a copy: the repository keeps c
		return nil
	})
	return st, err
}

func stateOf(id string, c *cart.Cart) CartState {
	return CartState{Cart: id, Version: c.Version(), Items: maps.Clone(c.Items), Quantity: c.Quantity(), CheckedOut: c.CheckedOut}
}

func unknownCart(id string) error {
	return fmt.Errorf("%w %q: it has no events", errUnknownCart, id)
}

// decode decodes a JSON request into v: one JSON object, no unknown fields.
func decode(subject string, data []byte, v any, example string) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return fmt.Errorf("%w: %s: empty request, expected a JSON object like %s", errBadRequest, subject, example)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err != nil {
		return fmt.Errorf("%w: %s: invalid JSON request: %s; expected a JSON object like %s",
			errBadRequest, subject, strings.TrimPrefix(err.Error(), "json: "), example)
	}
	return nil
}

// required refuses an empty field.
func required(subject, field, value, example string) error {
	if value == "" {
		return fmt.Errorf("%w: %s: %q is required, as in %s", errBadRequest, subject, field, example)
	}
	return nil
}

// cartRef decodes a CartRef request and returns its cart id.
func cartRef(subject string, data []byte) (string, error) {
	var req CartRef
	if err := decode(subject, data, &req, exampleCart); err != nil {
		return "", err
	}
	if err := required(subject, "cart", req.Cart, exampleCart); err != nil {
		return "", err
	}
	return req.Cart, nil
}

// Status returns the status code of a reply that failed with err: 400 for a
// malformed request or a cart rule refusing the command (and an invalid
// cart id, or an event too large), 404 for a cart with no events, 409 for
// a command still conflicting when its retries ran out, 500 otherwise.
func Status(err error) int {
	switch {
	case errors.Is(err, errBadRequest), cart.Rejected(err),
		errors.Is(err, stream.ErrInvalidID), errors.Is(err, stream.ErrTooLarge):
		return 400
	case errors.Is(err, errUnknownCart):
		return 404
	case errors.Is(err, stream.ErrConflict):
		return 409
	default:
		return 500
	}
}

// endpoint is one endpoint of a service: its name (the last subject
// token), an example request, and its handler, which returns the reply
// (marshalled as JSON) or an error (see Status).
type endpoint struct {
	name    string
	example string
	handle  func(ctx context.Context, data []byte) (any, error)
}

// addService registers a micro service with the endpoints, under
// <Prefix>.<name>, handling each request within cfg.RequestTimeout under
// parent. done is closed when the service stops (after Stop, or when the
// connection closes).
func addService(nc *nats.Conn, cfg Config, log *slog.Logger, name, description string, eps []endpoint, parent context.Context) (micro.Service, <-chan struct{}, error) {
	done := make(chan struct{})
	var once sync.Once
	svc, err := micro.AddService(nc, micro.Config{
		Name:        name,
		Version:     Version,
		Description: description,
		DoneHandler: func(micro.Service) { once.Do(func() { close(done) }) },
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			log.Error("service error", "subject", e.Subject, "error", e.Description)
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("registering micro service %s: %w", name, err)
	}
	group := svc.AddGroup(cfg.Prefix)
	for _, ep := range eps {
		subject := cfg.subject(ep.name)
		handler := micro.HandlerFunc(func(req micro.Request) {
			ctx, cancel := context.WithTimeout(parent, cfg.RequestTimeout)
			defer cancel()
			reply, err := ep.handle(ctx, req.Data())
			if err == nil {
				if err = req.RespondJSON(reply); err != nil {
					log.Error("reply not sent", "subject", subject, "error", err)
				}
				return
			}
			code := Status(err)
			msg := err.Error()
			if code == 500 {
				log.Error("request failed", "subject", subject, "error", err)
			} else {
				log.Debug("request refused", "subject", subject, "code", code, "error", err)
			}
			body, _ := json.Marshal(ErrorBody{Code: code, Error: msg})
			// The description travels in a header: one line.
			desc := strings.Join(strings.Fields(msg), " ")
			if err := req.Error(strconv.Itoa(code), desc, body); err != nil {
				log.Error("error reply not sent", "subject", subject, "error", err)
			}
		})
		if err := group.AddEndpoint(ep.name, handler, micro.WithEndpointMetadata(map[string]string{"request": ep.example})); err != nil {
			_ = svc.Stop()
			return nil, nil, fmt.Errorf("registering endpoint %s: %w", subject, err)
		}
	}
	return svc, done, nil
}

// waitService waits until ctx ends (then it stops the service and returns
// nil) or the service stops on its own (the connection closed: an error).
func waitService(ctx context.Context, svc micro.Service, done <-chan struct{}, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		if err := svc.Stop(); err != nil {
			log.Error("stopping the service", "error", err)
		}
		log.Info("stopped")
		return nil
	case <-done:
		return errors.New("the service stopped: the NATS connection is closed")
	}
}
