// Package adapter turns the webhooks of alert sources — Alertmanager,
// Grafana unified alerting and PagerDuty (webhooks v3) — into flarecast
// events. It only maps and checks: each mapped event is an ordinary event
// line that package ingest hands to the same publisher, validation and ids
// as POST /v1/events.
package adapter

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flarecast/flarecast/event"
)

// Config is the --adapters-config file (YAML, or JSON, which YAML reads).
// Every field is optional: a missing one keeps its default (Default).
type Config struct {
	Alertmanager AlertConfig     `yaml:"alertmanager"`
	Grafana      AlertConfig     `yaml:"grafana"`
	PagerDuty    PagerDutyConfig `yaml:"pagerduty"`
	Dedupe       DedupeConfig    `yaml:"dedupe"`
}

// AlertConfig maps the alerts of an Alertmanager-shaped webhook.
type AlertConfig struct {
	// Source is the events' "source" (default: the adapter's name).
	Source string `yaml:"source"`
	// SeverityLabel names the alert label the severity is read from
	// (default "severity"); its value is looked up in Severities, case
	// insensitively; a value already P0…P4 is taken as it is.
	SeverityLabel string `yaml:"severity_label"`
	// Severities maps severity label values to P0…P4; the file's entries
	// are added to (and replace) the defaults.
	Severities map[string]string `yaml:"severities"`
	// DefaultSeverity is used when the label is missing or not mapped;
	// empty (the default) leaves the event without a severity.
	DefaultSeverity string `yaml:"default_severity"`
	// SeverityOverrideLabel names a label whose value, P0…P4, wins over the
	// mapping for that alert (default "flarecast_severity").
	SeverityOverrideLabel string `yaml:"severity_override_label"`
	// ResourceLabels are the labels whose values become
	// affected_resources, in this order (default service, job, instance).
	ResourceLabels []string `yaml:"resource_labels"`
}

// PagerDutyConfig maps PagerDuty webhooks v3.
type PagerDutyConfig struct {
	// Source is the events' "source" (default "pagerduty").
	Source string `yaml:"source"`
	// Secret is the webhook subscription's signing secret. Set, every
	// request must carry a matching X-PagerDuty-Signature (the signature
	// is then the authentication; no bearer token is needed). Unset, the
	// route takes the ingest bearer token like every other.
	Secret string `yaml:"secret"`
	// SecretFile reads Secret from a file instead (trimmed).
	SecretFile string `yaml:"secret_file"`
	// Priorities maps the incident's priority name (P1…P5 in PagerDuty's
	// default scheme) to a severity; added to the defaults.
	Priorities map[string]string `yaml:"priorities"`
	// Urgencies maps the incident's urgency (high, low) to a severity when
	// it has no mapped priority; added to the defaults.
	Urgencies map[string]string `yaml:"urgencies"`
}

// DedupeConfig bounds the memory of deliveries already published.
type DedupeConfig struct {
	// MaxKeys is how many alert states (and PagerDuty event ids) are
	// remembered, oldest forgotten first (default 100000; 0 turns
	// de-duplication off).
	MaxKeys int `yaml:"max_keys"`
	// Window is how long one is remembered (default 24h).
	Window Duration `yaml:"window"`
}

// Duration is a time.Duration written as "24h" in the file.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Default returns the mapping used without --adapters-config.
func Default() Config {
	alert := func(source string) AlertConfig {
		return AlertConfig{
			Source:        source,
			SeverityLabel: "severity",
			Severities: map[string]string{
				"critical": "P1", "page": "P1", "error": "P2", "high": "P2",
				"warning": "P3", "warn": "P3", "medium": "P3",
				"info": "P4", "low": "P4", "none": "P4",
			},
			SeverityOverrideLabel: "flarecast_severity",
			ResourceLabels:        []string{"service", "job", "instance"},
		}
	}
	return Config{
		Alertmanager: alert("alertmanager"),
		Grafana:      alert("grafana"),
		PagerDuty: PagerDutyConfig{
			Source:     "pagerduty",
			Priorities: map[string]string{"P1": "P1", "P2": "P2", "P3": "P3", "P4": "P4", "P5": "P4"},
			Urgencies:  map[string]string{"high": "P2", "low": "P4"},
		},
		Dedupe: DedupeConfig{MaxKeys: 100000, Window: Duration(24 * time.Hour)},
	}
}

// Load reads a config file over the defaults and checks it. An unknown
// key is an error (a typo must not silently keep a default).
func Load(path string) (Config, error) {
	cfg, err := load(path)
	if err != nil {
		// One line: the server prints it as its only line on a refused start.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return cfg, errors.New(strings.ReplaceAll(msg, ":;", ":"))
	}
	return cfg, nil
}

func load(path string) (Config, error) {
	cfg := Default()
	raw, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("adapters config: %w", err)
	}
	var file Config
	file.Dedupe.MaxKeys = unset // tells "max_keys: 0" (off) from no max_keys
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("adapters config %s: %w", path, err)
	}
	cfg.Alertmanager.merge(file.Alertmanager)
	cfg.Grafana.merge(file.Grafana)
	p := file.PagerDuty
	if p.Source != "" {
		cfg.PagerDuty.Source = p.Source
	}
	cfg.PagerDuty.Secret = p.Secret
	if p.SecretFile != "" {
		if p.Secret != "" {
			return cfg, fmt.Errorf("adapters config %s: pagerduty secret and secret_file exclude each other", path)
		}
		s, err := os.ReadFile(p.SecretFile)
		if err != nil {
			return cfg, fmt.Errorf("adapters config %s: pagerduty secret_file: %w", path, err)
		}
		cfg.PagerDuty.Secret = strings.TrimSpace(string(s))
		if cfg.PagerDuty.Secret == "" {
			return cfg, fmt.Errorf("adapters config %s: pagerduty secret_file %s is empty", path, p.SecretFile)
		}
	}
	mergeMap(cfg.PagerDuty.Priorities, p.Priorities, false)
	mergeMap(cfg.PagerDuty.Urgencies, p.Urgencies, true)
	if file.Dedupe.MaxKeys != unset {
		cfg.Dedupe.MaxKeys = file.Dedupe.MaxKeys
	}
	if file.Dedupe.Window != 0 {
		cfg.Dedupe.Window = file.Dedupe.Window
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("adapters config %s: %w", path, err)
	}
	return cfg, nil
}

const unset = math.MinInt

func (a *AlertConfig) merge(f AlertConfig) {
	if f.Source != "" {
		a.Source = f.Source
	}
	if f.SeverityLabel != "" {
		a.SeverityLabel = f.SeverityLabel
	}
	mergeMap(a.Severities, f.Severities, true)
	if f.DefaultSeverity != "" {
		a.DefaultSeverity = f.DefaultSeverity
	}
	if f.SeverityOverrideLabel != "" {
		a.SeverityOverrideLabel = f.SeverityOverrideLabel
	}
	if f.ResourceLabels != nil {
		a.ResourceLabels = f.ResourceLabels
	}
}

func mergeMap(dst, src map[string]string, lower bool) {
	for k, v := range src {
		if lower {
			k = strings.ToLower(k)
		}
		dst[k] = v
	}
}

// Validate checks that every severity the config names is P0…P4.
func (c *Config) Validate() error {
	var errs []error
	sev := func(where, v string) {
		if !event.ValidSeverity(v) {
			errs = append(errs, fmt.Errorf("%s: %q is not one of P0, P1, P2, P3, P4", where, v))
		}
	}
	for name, a := range map[string]*AlertConfig{"alertmanager": &c.Alertmanager, "grafana": &c.Grafana} {
		for k, v := range a.Severities {
			sev(name+".severities."+k, v)
		}
		if a.DefaultSeverity != "" {
			sev(name+".default_severity", a.DefaultSeverity)
		}
	}
	for k, v := range c.PagerDuty.Priorities {
		sev("pagerduty.priorities."+k, v)
	}
	for k, v := range c.PagerDuty.Urgencies {
		sev("pagerduty.urgencies."+k, v)
	}
	if c.Dedupe.MaxKeys < 0 || c.Dedupe.Window < 0 {
		errs = append(errs, errors.New("dedupe max_keys and window must not be negative"))
	}
	return errors.Join(errs...)
}
