package main

import (
	"net/http"
	"slices"
	"time"

	"github.com/qugo/queue"
)

// groupsData is the Groups page: the groups named by -group, and the one
// looked up with ?name=, as "qugo group" shows them.
type groupsData struct {
	Name   string // the name looked up, for the form
	Groups []groupView
}

// groupView is one consumer group.
type groupView struct {
	groupDoc
	Members []memberView
	// Joined is false for a group no member has ever joined: most
	// likely a mistyped name or -prefix.
	Joined bool
}

// memberView is one live member, with the worker goroutines of the
// pools on the queues whose lease it holds.
type memberView struct {
	groupMemberRow
	Joined      time.Time
	Heartbeat   time.Duration
	SessionLeft time.Duration
	Workers     int
}

func (s *server) groupsPage(w http.ResponseWriter, r *http.Request) {
	v := s.newView(r, "Groups", "groups")
	v.refreshing(r)
	d := groupsData{Name: r.URL.Query().Get("name")}
	names := slices.Clone(s.cfg.groups)
	status := http.StatusOK
	if d.Name != "" {
		if err := queue.CheckGroupName(d.Name); err != nil {
			v.Warn = err.Error()
			status = http.StatusBadRequest
		} else if !slices.Contains(names, d.Name) {
			names = append(names, d.Name)
		}
	}
	if len(names) == 0 {
		s.render(w, r, status, "groups", v, d)
		return
	}
	ctx, cancel := s.redisContext(r)
	defer cancel()
	q, err := s.be.get(ctx)
	var stats []queue.AnalyserStats
	if err == nil {
		stats, err = q.Stats(ctx)
	}
	for _, name := range names {
		if err != nil {
			break
		}
		var st queue.GroupStatus
		if st, err = q.GroupStatus(ctx, name); err == nil {
			d.Groups = append(d.Groups, groupViewOf(newGroupDoc(st, stats, q.Analysers()), stats))
		}
	}
	if err != nil {
		status = s.failure(v, err)
	}
	s.render(w, r, status, "groups", v, d)
}

func groupViewOf(doc groupDoc, stats []queue.AnalyserStats) groupView {
	g := groupView{groupDoc: doc, Joined: doc.Generation > 0 || len(doc.Members) > 0}
	for _, m := range doc.Members {
		mv := memberView{
			groupMemberRow: m,
			Heartbeat:      time.Duration(m.HeartbeatAgeMS) * time.Millisecond,
			SessionLeft:    time.Duration(m.SessionLeftMS) * time.Millisecond,
		}
		if m.Joined != nil {
			mv.Joined = *m.Joined
		}
		for _, a := range m.Leases {
			mv.Workers += stats[a].Workers
		}
		g.Members = append(g.Members, mv)
	}
	return g
}
