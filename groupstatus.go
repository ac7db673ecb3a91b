package queue

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// GroupMember is one live member of a group, as GroupStatus reads it.
type GroupMember struct {
	Name      string        // the member's name, as given to JoinGroup
	Weight    int           // its GroupConfig.Weight
	Joined    time.Time     // when this member joined (Redis's clock)
	Heartbeat time.Duration // since its last heartbeat
	Expires   time.Duration // until its session ends unless it beats again
	Analysers []int         // the queues assigned to it
}

// GroupStatus is a group's membership and assignment.
type GroupStatus struct {
	Group string // the group's name
	// Generation is Redis's clock in milliseconds when the assignment
	// last changed (one more than the last generation when the clock is
	// not ahead of it): it grows with every change, and is 0 for a group
	// no member has joined.
	Generation int64
	Members    []GroupMember // the live members, by name
	Unassigned []int         // analysers no live member has (none while a member lives)
}

// GroupStatus reads a group's members and assignment. Members whose
// session has run out are left out (the next heartbeat drops them).
func (q *Queue) GroupStatus(ctx context.Context, group string) (GroupStatus, error) {
	g, err := q.newGroupStore(group, time.Second)
	if err == nil {
		// Another layout shares out another count of analysers.
		err = q.verifyLayout(ctx, g.part)
	}
	if err != nil {
		return GroupStatus{}, err
	}
	what := fmt.Sprintf("read group %q", group)
	type raw struct {
		now          []int64
		members      []string
		info, assign map[string]string
		gen          int64
	}
	r, err := onPartition(ctx, g.part, what, func(conn redis.Conn) (raw, error) {
		var r raw
		for _, c := range [][]any{{"TIME"}, {"ZRANGE", g.keys.members, 0, -1, "WITHSCORES"}, {"HGETALL", g.keys.info},
			{"HGETALL", g.keys.assign}, {"HGET", g.keys.meta, "gen"}} {
			if err := conn.Send(c[0].(string), c[1:]...); err != nil {
				return r, err
			}
		}
		if err := conn.Flush(); err != nil {
			return r, err
		}
		var errs [5]error
		var t []int64
		t, errs[0] = redis.Int64s(receiveContext(conn, ctx))
		r.members, errs[1] = redis.Strings(receiveContext(conn, ctx))
		r.info, errs[2] = redis.StringMap(receiveContext(conn, ctx))
		r.assign, errs[3] = redis.StringMap(receiveContext(conn, ctx))
		r.gen, errs[4] = redis.Int64(receiveContext(conn, ctx))
		if errs[4] == redis.ErrNil {
			errs[4] = nil
		}
		for _, err := range errs {
			if err != nil {
				return r, err
			}
		}
		if len(t) == 2 {
			r.now = t
		}
		return r, nil
	})
	if err != nil {
		return GroupStatus{}, err
	}
	if r.now == nil {
		return GroupStatus{}, fmt.Errorf("queue: %s: unexpected TIME reply", what)
	}
	now := r.now[0]*1000 + r.now[1]/1000
	st := GroupStatus{Group: group, Generation: r.gen}
	byName := map[string]int{}
	for i := 0; i+1 < len(r.members); i += 2 {
		end, err := strconv.ParseInt(r.members[i+1], 10, 64)
		if err != nil || end <= now {
			continue
		}
		m := GroupMember{Name: r.members[i], Weight: 1, Expires: time.Duration(end-now) * time.Millisecond}
		if f := strings.Split(r.info[m.Name], ":"); len(f) == 3 {
			m.Weight, _ = strconv.Atoi(f[0])
			if j, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				m.Joined = time.UnixMilli(j)
			}
			if b, err := strconv.ParseInt(f[2], 10, 64); err == nil {
				m.Heartbeat = time.Duration(max(now-b, 0)) * time.Millisecond
			}
		}
		byName[m.Name] = len(st.Members)
		st.Members = append(st.Members, m)
	}
	for a := range g.n {
		i, ok := byName[r.assign[strconv.Itoa(a)]]
		if !ok {
			st.Unassigned = append(st.Unassigned, a)
			continue
		}
		st.Members[i].Analysers = append(st.Members[i].Analysers, a)
	}
	slices.SortFunc(st.Members, func(a, b GroupMember) int { return strings.Compare(a.Name, b.Name) })
	return st, nil
}
