package loadtest

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var chartColors = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// latencyChart draws the latency percentiles of each progress interval over
// time (log scale) above the deliveries per second, and saves a PNG.
func latencyChart(r *Result, path string) error {
	lat := plot.New()
	lat.Title.Text = fmt.Sprintf("flarecast %s: end-to-end latency per %s interval (ingest write → client read)",
		r.Name, intervalText(r))
	lat.Y.Label.Text = "latency (ms, log scale)"
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = logTicks{}
	lat.Add(plotter.NewGrid())
	series := []struct {
		name string
		get  func(Sample) float64
	}{
		{"p50", func(s Sample) float64 { return s.P50 }},
		{"p95", func(s Sample) float64 { return s.P95 }},
		{"p99", func(s Sample) float64 { return s.P99 }},
		{"max", func(s Sample) float64 { return s.Max }},
	}
	for i, se := range series {
		var pts plotter.XYs
		for _, s := range r.Timeline {
			if s.Deliveries > 0 {
				pts = append(pts, plotter.XY{X: s.T, Y: max(se.get(s), 0.001)})
			}
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("latency chart: %w", err)
		}
		l.Color, l.Width = chartColors[i], vg.Points(1.5)
		lat.Add(l)
		lat.Legend.Add(se.name, l)
	}
	lat.Legend.Top, lat.Legend.Left = true, true

	thr := plot.New()
	thr.Title.Text = fmt.Sprintf("deliveries per second (overall %s/s; %d connections, %s events/s target)",
		num(r.Deliveries.PerSecond), r.Connections.Held, num(r.Settings.Rate))
	thr.X.Label.Text = "time since start (s)"
	thr.Y.Label.Text = "deliveries/s"
	thr.Add(plotter.NewGrid())
	var pts plotter.XYs
	for _, s := range r.Timeline {
		pts = append(pts, plotter.XY{X: s.T, Y: s.PerSec})
	}
	l, err := plotter.NewLine(pts)
	if err != nil {
		return fmt.Errorf("throughput chart: %w", err)
	}
	l.Color, l.Width = chartColors[0], vg.Points(1.5)
	thr.Add(l)
	thr.Y.Min = 0
	lat.X.Min, lat.X.Max = thr.X.Min, thr.X.Max

	return saveStacked(path, []*plot.Plot{lat, thr}, 10*vg.Inch, 8*vg.Inch)
}

// rssChart draws the server's RSS (and Go heap in use, when /metrics was
// read) against the connections held, and saves a PNG.
func rssChart(r *Result, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("flarecast %s: server memory against connections held (RSS %s/conn, Go heap %s/conn)",
		r.Name, bytesText(int64(r.Server.RSSPerConn)), bytesText(int64(r.Server.HeapPerConn)))
	p.X.Label.Text = "connections held (each subscribed)"
	p.Y.Label.Text = "MiB"
	p.Add(plotter.NewGrid())
	var rss, heap plotter.XYs
	for _, m := range r.Memory {
		if m.RSS > 0 {
			rss = append(rss, plotter.XY{X: float64(m.Conns), Y: float64(m.RSS) / (1 << 20)})
		}
		if m.Heap > 0 {
			heap = append(heap, plotter.XY{X: float64(m.Conns), Y: float64(m.Heap) / (1 << 20)})
		}
	}
	for i, s := range []struct {
		name string
		pts  plotter.XYs
	}{{"RSS", rss}, {"Go heap in use", heap}} {
		if len(s.pts) == 0 {
			continue
		}
		lp, sc, err := plotter.NewLinePoints(s.pts)
		if err != nil {
			return fmt.Errorf("memory chart: %w", err)
		}
		lp.Color, sc.Color, sc.Shape = chartColors[i], chartColors[i], draw.CircleGlyph{}
		sc.Radius = vg.Points(2)
		p.Add(lp, sc)
		p.Legend.Add(s.name, lp, sc)
	}
	p.Legend.Top, p.Legend.Left = true, true
	return saveStacked(path, []*plot.Plot{p}, 10*vg.Inch, 5*vg.Inch)
}

// saveStacked draws plots one above the other, aligned, into a PNG.
func saveStacked(path string, plots []*plot.Plot, w, h vg.Length) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(rows, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return f.Close()
}

func intervalText(r *Result) string {
	if len(r.Timeline) > 1 {
		d := r.Timeline[1].T - r.Timeline[0].T
		return fmt.Sprintf("%.1f s", d)
	}
	return "1 s"
}

// logTicks labels a log axis at 1, 2 and 5 times each power of ten inside
// the range (gonum's LogTicks labels powers of ten only, which a range
// such as 40–900 ms does not contain), with unlabelled minor ticks between.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for d := math.Floor(math.Log10(lo)); d <= math.Ceil(math.Log10(hi)); d++ {
		p := math.Pow(10, d)
		for m := 1; m < 10; m++ {
			v := float64(m) * p
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = strconv.FormatFloat(v, 'g', 4, 64)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}
