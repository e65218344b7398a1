package ingest

import (
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/flarecast/flarecast/adapter"
	"github.com/flarecast/flarecast/event"
)

// AdaptersPrefix is where the alert-source webhooks are posted:
// /v1/adapters/alertmanager, /v1/adapters/grafana, /v1/adapters/pagerduty.
const AdaptersPrefix = "/v1/adapters/"

// Adapter names, as in the path and the metrics.
const (
	AdapterAlertmanager = "alertmanager"
	AdapterGrafana      = "grafana"
	AdapterPagerDuty    = "pagerduty"
)

// AdapterNames lists the adapters.
var AdapterNames = []string{AdapterAlertmanager, AdapterGrafana, AdapterPagerDuty}

// Results of one alert of a webhook, for Adapters.Observe.
const (
	ResultReceived    = "received"    // every alert of a payload that could be read
	ResultAccepted    = "accepted"    // published: it has a message_id
	ResultDuplicate   = "duplicate"   // a repeated delivery, not published again
	ResultRejected    = "rejected"    // not mappable, or the mapped event failed validation
	ResultUnavailable = "unavailable" // not published for now (shutdown, broker down): the sender retries
)

// AdapterResults lists the results.
var AdapterResults = []string{ResultReceived, ResultAccepted, ResultDuplicate, ResultRejected, ResultUnavailable}

// Adapters serves the alert-source webhooks on the HTTP ingest listener.
// Each alert a webhook carries is mapped (package adapter) to one event
// line and published through the same Publisher as POST /v1/events, so
// validation, message_ids and backpressure are the same.
type Adapters struct {
	Config adapter.Config
	// Dedupe remembers the deliveries already published (nil: none).
	Dedupe *adapter.Dedupe
	// Observe, if set, counts alerts by adapter and result.
	Observe func(adapter, result string, n int)
}

// adapterReply is the JSON reply of a webhook.
type adapterReply struct {
	Accepted   []adapterResult `json:"accepted"`
	Duplicates []adapterResult `json:"duplicates"`
	Skipped    []adapterResult `json:"skipped"`
	Error      string          `json:"error,omitempty"`
}

type adapterResult struct {
	Alert     int    `json:"alert"` // index in the payload's alerts (PagerDuty: 0)
	ID        string `json:"id,omitempty"`
	MessageID uint64 `json:"message_id,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

func (s *HTTPServer) serveAdapter(w http.ResponseWriter, r *http.Request, name string) {
	a := s.Adapters
	switch name {
	case AdapterAlertmanager, AdapterGrafana, AdapterPagerDuty:
	default:
		s.fail(w, http.StatusNotFound, "not found: adapters are "+AdaptersPrefix+strings.Join(AdapterNames, ", "+AdaptersPrefix))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.fail(w, http.StatusMethodNotAllowed, "method not allowed: use POST")
		return
	}
	// With a PagerDuty secret the signature authenticates the request;
	// every other adapter request needs the bearer token.
	signed := name == AdapterPagerDuty && a.Config.PagerDuty.Secret != ""
	if !signed && !s.authorized(r) {
		s.unauthorized(w, r)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			s.fail(w, http.StatusUnsupportedMediaType, "unsupported Content-Type "+ct+": send application/json")
			return
		}
	}
	body, ok := s.receiveBody(w, r, nil)
	if !ok {
		return
	}
	if signed && !adapter.VerifySignature(a.Config.PagerDuty.Secret, r.Header.Get("X-PagerDuty-Signature"), body) {
		s.fail(w, http.StatusUnauthorized, "unauthorized: X-PagerDuty-Signature does not match the configured secret")
		return
	}

	var items []adapter.Item
	var err error
	switch name {
	case AdapterAlertmanager:
		items, err = adapter.MapAlerts(body, &a.Config.Alertmanager, false)
	case AdapterGrafana:
		items, err = adapter.MapAlerts(body, &a.Config.Grafana, true)
	case AdapterPagerDuty:
		items, err = adapter.MapPagerDuty(body, &a.Config.PagerDuty)
	}
	if err != nil {
		s.fail(w, http.StatusBadRequest, "bad "+name+" payload: "+err.Error())
		return
	}
	reply, code := a.publish(r, s.Publisher, name, items)
	out, _ := json.Marshal(reply)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	s.observe(code)
	_, _ = w.Write(append(out, '\n'))
}

// publish dedupes the mapped items and publishes the rest in one batch.
func (a *Adapters) publish(r *http.Request, p Publisher, name string, items []adapter.Item) (adapterReply, int) {
	reply := adapterReply{Accepted: []adapterResult{}, Duplicates: []adapterResult{}, Skipped: []adapterResult{}}
	count := map[string]int{ResultReceived: len(items)}
	var lines [][]byte
	var which []int // index in items of each line
	for i, it := range items {
		if it.Skip != "" {
			reply.Skipped = append(reply.Skipped, adapterResult{Alert: i, ID: it.ID, Reason: it.Skip})
			count[ResultRejected]++
			continue
		}
		if it.Key != "" {
			if id, fresh := a.Dedupe.Reserve(name + "|" + it.Key); !fresh {
				reply.Duplicates = append(reply.Duplicates, adapterResult{Alert: i, ID: it.ID, MessageID: id})
				count[ResultDuplicate]++
				continue
			}
		}
		lines = append(lines, it.Line)
		which = append(which, i)
	}
	code := http.StatusOK
	if len(lines) > 0 {
		ids := make([]uint64, len(lines))
		errs := make([]error, len(lines))
		p.PublishJSONBatch(r.Context(), lines, ids, errs)
		for j, i := range which {
			key := items[i].Key
			if key != "" {
				key = name + "|" + key
			}
			switch err := errs[j]; {
			case err == nil:
				a.Dedupe.Commit(key, ids[j])
				reply.Accepted = append(reply.Accepted, adapterResult{Alert: i, ID: items[i].ID, MessageID: ids[j]})
				count[ResultAccepted]++
			default:
				if key != "" {
					a.Dedupe.Release(key)
				}
				if perr, ok := errors.AsType[*event.Error](err); ok {
					reply.Skipped = append(reply.Skipped, adapterResult{Alert: i, ID: items[i].ID, Reason: perr.Message})
					count[ResultRejected]++
				} else {
					reply.Skipped = append(reply.Skipped, adapterResult{Alert: i, ID: items[i].ID, Reason: "not accepted: " + err.Error()})
					reply.Error = "some alerts were not accepted for now; retry the delivery (accepted ones are not published twice)"
					count[ResultUnavailable]++
					code = http.StatusServiceUnavailable
				}
			}
		}
	}
	slices.SortFunc(reply.Skipped, func(x, y adapterResult) int { return x.Alert - y.Alert })
	if a.Observe != nil {
		for res, n := range count {
			if n > 0 {
				a.Observe(name, res, n)
			}
		}
	}
	return reply, code
}
