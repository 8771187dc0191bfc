package projections

import "errors"

// Errors of the Runner and of the control plane (Runner.Serve,
// ControlClient). Test for them with errors.Is: a worker's error reaches a
// ControlClient as a *ControlError that unwraps to the same sentinel.
var (
	// ErrUnknownProjection: no projection of that name was added to the
	// runner (or, through a ControlClient, to any worker of the store).
	ErrUnknownProjection = errors.New("projections: unknown projection")
	// ErrBusy: the projection is already being rebuilt or reset, or it is
	// running where it must be stopped (Runner.Reset; a remote reset of a
	// projection that more than one worker process runs).
	ErrBusy = errors.New("projections: busy")
	// ErrNoFresh: a rebuild was requested from outside the process for a
	// projection without Projection.Fresh, so the worker cannot make the
	// empty model to rebuild into.
	ErrNoFresh = errors.New("projections: no Projection.Fresh")
	// ErrInvalidReset: Runner.Reset cannot move this projection where
	// asked (an exactly-once model only goes back to the start, and must be
	// a Resetter).
	ErrInvalidReset = errors.New("projections: invalid reset")
	// ErrNoWorker: no worker process of the store answered a
	// ControlClient, or the one doing a rebuild stopped reporting.
	ErrNoWorker = errors.New("projections: no worker process answered")
)
