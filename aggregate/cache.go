package aggregate

import (
	"container/list"
	"sync"
)

// lru is a bounded cache of aggregates nobody else holds: take removes an
// entry (the caller now owns it), put returns it after a successful save.
// A nil *lru is a disabled cache.
type lru[A Aggregate] struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *entry[A]
	items map[string]*list.Element
}

type entry[A Aggregate] struct {
	id string
	a  A
}

func newLRU[A Aggregate](max int) *lru[A] {
	return &lru[A]{max: max, order: list.New(), items: make(map[string]*list.Element)}
}

func (c *lru[A]) take(id string) (A, bool) {
	var zero A
	if c == nil {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[id]
	if !ok {
		return zero, false
	}
	c.order.Remove(el)
	delete(c.items, id)
	return el.Value.(*entry[A]).a, true
}

func (c *lru[A]) put(id string, a A) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[id]; ok {
		// Another instance was put back meanwhile: keep the newer one.
		if old := el.Value.(*entry[A]).a; old.root().sequence < a.root().sequence {
			el.Value = &entry[A]{id: id, a: a}
		}
		c.order.MoveToFront(el)
		return
	}
	c.items[id] = c.order.PushFront(&entry[A]{id: id, a: a})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*entry[A]).id)
	}
}

func (c *lru[A]) drop(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[id]; ok {
		c.order.Remove(el)
		delete(c.items, id)
	}
}
