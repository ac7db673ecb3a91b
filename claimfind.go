package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/gomodule/redigo/redis"
)

// Finding a task among the claims: the places claim records give it,
// their reads (State, Status), and, for claims whose records hold no
// task IDs yet, a search of their lists in Redis.

// claimPlace is a place in a claim record, or (at -1) a whole claim whose
// record holds no IDs yet.
type claimPlace struct {
	first string
	at    int
}

// claimPlaces returns the places the claim records among records (the
// queue's claim-sequence hash) give task id, finished or not, and the
// claims whose records do not hold their IDs yet (at -1), which may hold
// it anywhere. Only a whole task ID matches.
func claimPlaces(records map[string]string, id string) []claimPlace {
	if len(id) != idLen {
		return nil
	}
	var found []claimPlace
	for f, v := range records {
		if _, later := laterCount(v); later {
			found = append(found, claimPlace{f, -1})
			continue
		}
		ids, list, _ := claimIDs(v)
		if !list {
			continue
		}
		for at := 0; at+idLen <= len(ids); at += idLen {
			if ids[at:at+idLen] == id {
				found = append(found, claimPlace{f, at / idLen})
			}
		}
	}
	return found
}

// sendPlaces sends the reads of the places found (claimPlaces) on c: the
// entry and the done bit of each, and findScript's search of the claims
// whose records hold no IDs yet; receivePlaces reads their replies.
func sendPlaces(c redis.Conn, k queueKeys, found []claimPlace, id string) error {
	if args := findArgs(k, found, id); args != nil {
		if err := findScript.Send(c, args...); err != nil {
			return err
		}
	}
	for _, p := range found {
		if p.at >= 0 {
			if err := findScript.Send(c, placeArgs(k, p, id)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// placeArgs returns findScript's arguments for the one place p, of a
// record that holds the claim's IDs.
func placeArgs(k queueKeys, p claimPlace, id string) []any {
	return []any{5, k.ready, k.meta, k.claims, claimListKey(k, p.first), claimDoneKey(k, p.first), id, p.at}
}

// receivePlaces reads the replies of sendPlaces(c, k, found, id), all of
// them, and returns the entry of a place where the task is pending, or
// nil.
func receivePlaces(ctx context.Context, c redis.Conn, found []claimPlace, id string) ([]byte, error) {
	var entry []byte
	var errs []error
	if findArgs(queueKeys{}, found, id) != nil {
		r, err := redis.Values(receiveContext(c, ctx))
		if err == nil {
			var fs []foundPlace
			if fs, err = parseFound(r, found); err == nil {
				for _, f := range fs {
					if !f.done && entry == nil {
						entry = f.entry
					}
				}
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range found {
		if p.at < 0 {
			continue
		}
		r, err := redis.Values(receiveContext(c, ctx))
		var fs []foundPlace
		if err == nil {
			fs, err = parseFound(r, []claimPlace{{p.first, -1}})
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range fs {
			if f.at == p.at && !f.done && entry == nil {
				entry = f.entry
			}
		}
	}
	return entry, errors.Join(errs...)
}

// findScript finds a task in the lists of claims whose records hold no
// IDs yet, without sending their entries back: the readers that would
// otherwise read whole lists (State, Status, Cancel) get only the places
// that hold the task. A claim in place is read where it is, in the ready
// list (claimend.go); it reads, and changes, nothing else. A list or
// bitmap of another type names nothing.
//
//	KEYS[1] = ready list, KEYS[2] = meta hash, KEYS[3] = claim-sequence hash,
//	then the list and done bitmap of each claim
//	ARGV[1] = task ID, ARGV[2] = the one place to look at (absent or -1: every place)
//
// Returns {claim (1-based, in KEYS order), place, entry, done bit, ...}
// for each place whose entry holds the task.
var findScript = newScript("find", -1, typeCheck(listAt(1), hashAt(2), hashAt(3))+luaEnd+`
local out = {}
local only = tonumber(ARGV[2] or '-1') or -1
for i = 4, #KEYS, 2 do
  local l, d = KEYS[i], KEYS[i + 1]
  -- entry(p): the entry at place p; n: the claim's size.
  local entry, n
  local t = redis.pcall('TYPE', l)
  if type(t) == 'table' and t.ok == 'list' then
    local es
    entry = function(p)
      if only >= 0 then return redis.call('LINDEX', l, p) end
      es = es or redis.call('LRANGE', l, 0, -1)
      return es[p + 1]
    end
    n = redis.call('LLEN', l)
  else
    local first = string.match(l, 'claim:(%d+)$')
    local off = first and inEnd(KEYS[2], first)
    n = off and recordCount(redis.call('HGET', KEYS[3], first))
    if n then
      local es
      entry = function(p)
        if only >= 0 then return redis.call('LINDEX', KEYS[1], -(off + p + 1)) end
        es = es or redis.call('LRANGE', KEYS[1], -(off + n), -(off + 1))
        return es[n - p]
      end
    end
  end
  if entry then
    local from, to = 0, n - 1
    if only >= 0 then from, to = only, only end
    for p = from, to do
      local e = entry(p)
      local h = e and string.byte(e, 1) == $accountedByte and 2 or 1
      local v = e and string.byte(e, h)
      if v and v <= $entryFlags and v % 2 == $entryTask and string.sub(e, h + 1, h + $idLen) == ARGV[1] then
        local done = redis.pcall('GETBIT', d, p)
        out[#out + 1] = (i - 2) / 2
        out[#out + 1] = p
        out[#out + 1] = e
        out[#out + 1] = type(done) == 'number' and done or 0
      end
    end
  end
end
return out
`)

// findArgs returns findScript's arguments for the claims of places (those
// at -1) and task id, or nil when there are none.
func findArgs(k queueKeys, places []claimPlace, id string) []any {
	var args []any
	for _, p := range places {
		if p.at < 0 {
			if args == nil {
				args = []any{0, k.ready, k.meta, k.claims}
			}
			args = append(args, claimListKey(k, p.first), claimDoneKey(k, p.first))
		}
	}
	if args == nil {
		return nil
	}
	args[0] = len(args) - 1
	return append(args, id, -1)
}

// foundPlace is a place findScript found.
type foundPlace struct {
	claimPlace
	entry []byte
	done  bool
}

// parseFound reads findScript's reply for the claims of places (those at
// -1, in order).
func parseFound(r []any, places []claimPlace) ([]foundPlace, error) {
	var lazy []claimPlace
	for _, p := range places {
		if p.at < 0 {
			lazy = append(lazy, p)
		}
	}
	var out []foundPlace
	for i := 0; i+3 < len(r); i += 4 {
		c, cerr := redis.Int(r[i], nil)
		at, aerr := redis.Int(r[i+1], nil)
		e, eerr := redis.Bytes(r[i+2], nil)
		done, derr := redis.Int(r[i+3], nil)
		if err := errors.Join(cerr, aerr, eerr, derr); err != nil || c < 1 || c > len(lazy) || at < 0 {
			return nil, fmt.Errorf("%w: unexpected find reply %v", ErrMalformed, r)
		}
		out = append(out, foundPlace{claimPlace{lazy[c-1].first, at}, e, done == 1})
	}
	return out, nil
}
