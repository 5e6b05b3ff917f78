package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/console"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// chromiumPath is Debian's chromium, which .ci/run installs. Without it the browser test
// is skipped, unless THROUGHCARE_REQUIRE_CHROMIUM=1 (as in CI), when it fails.
const chromiumPath = "/usr/bin/chromium"

// consoleViewport is the browser window the console is drawn and photographed in.
const consoleWidth, consoleHeight = 1400, 1000

// browserWait bounds waiting in the browser for what the page shows: a cross-agency
// delivery, then a poll of the console's feed.
const browserWait = crossAgencyWait + 10*time.Second

// startConsole serves `throughcare console` with args on a free loopback port against the
// test system, with the operator's certificate and NATS credentials, and returns its URL.
func startConsole(t *testing.T, sys *system, args ...string) string {
	t.Helper()
	cfg, err := parseConsoleConfig(append([]string{"--addr", "127.0.0.1:0", "--refresh", "300ms"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	reachAsOperator(sys, &cfg.operatorConfig)
	cfg.NATSURL = sys.NATS.URL()
	cfg.NATSSeed = sys.NATS.Creds.SeedFile(natsserver.OperatorAccount)
	cfg.SystemSeed = sys.NATS.Creds.SeedFile(natsserver.SystemAccount)
	ln, err := console.Listen(cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveConsole(ctx, cfg, ln, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("console: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the console did not stop within 10s of its context's end")
		}
	})
	return "http://" + ln.Addr().String() + "/"
}

// openBrowser starts headless Chromium with a profile of its own, and returns a tab and
// the exceptions its pages throw.
func openBrowser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("THROUGHCARE_REQUIRE_CHROMIUM") == "1" {
			t.Fatalf("THROUGHCARE_REQUIRE_CHROMIUM=1 and no %s: %v", chromiumPath, err)
		}
		t.Skipf("no %s (apt-get install chromium; .ci/run does): %v", chromiumPath, err)
	}
	profile, err := os.MkdirTemp("", "throughcare-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Chromium's helpers may write into the profile a moment after it exits.
		for range 50 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(consoleWidth, consoleHeight))
	t.Cleanup(cancelAlloc)
	tab, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(cancelTab)
	var (
		mu     sync.Mutex
		thrown []string
	)
	messages := chromedp.Console(tab)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() {
				mu.Lock()
				thrown = append(thrown, m.Text)
				mu.Unlock()
			}
		}
	}()
	return tab, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(thrown) }
}

// waitInPage waits until the page's expression is true, and fails the test with what it
// waited for when it is not in time.
func waitInPage(t *testing.T, tab context.Context, what, expression string) {
	t.Helper()
	if _, err := chromedp.Run(tab, chromedp.Poll[bool]("!!("+expression+")", chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(browserWait))); err != nil {
		html, _ := chromedp.Run(tab, chromedp.OuterHTML("main"))
		t.Fatalf("the console does not show %s within %s: %v\n%s", what, browserWait, err, html)
	}
}

// Expressions on the console's page.
const (
	edgeOf = `document.querySelector('#edges .edge[data-from="%s"][data-to="%s"]')`
	rowOf  = `document.querySelector('#%s tr[data-handover="%s"]%s')`
)

// markPersonalData puts a marker of its own in every string of m that holds personal
// data: every string at or below a field the contract gives a data category (but a
// country code, whose pattern no marker fits). It returns the markers.
func markPersonalData(m proto.Message) []string {
	var markers []string
	next := func(fd protoreflect.FieldDescriptor) protoreflect.Value {
		marker := fmt.Sprintf("PDMARK%02dZ", len(markers)+1)
		markers = append(markers, marker)
		if fd.Name() == "email" {
			return protoreflect.ValueOfString(marker + "@example.org")
		}
		return protoreflect.ValueOfString(marker)
	}
	var walk func(m protoreflect.Message, personal bool)
	walk = func(m protoreflect.Message, personal bool) {
		var fields []protoreflect.FieldDescriptor
		m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
			fields = append(fields, fd)
			return true
		})
		slices.SortFunc(fields, func(a, b protoreflect.FieldDescriptor) int { return int(a.Number() - b.Number()) })
		for _, fd := range fields {
			inside := personal || protocol.MarkerOf(fd).Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED
			switch {
			case fd.IsMap():
			case fd.IsList():
				list := m.Mutable(fd).List()
				for i := range list.Len() {
					if fd.Message() != nil {
						walk(list.Get(i).Message(), inside)
					} else if fd.Kind() == protoreflect.StringKind && inside {
						list.Set(i, next(fd))
					}
				}
			case fd.Message() != nil:
				walk(m.Mutable(fd).Message(), inside)
			case fd.Kind() == protoreflect.StringKind && inside && fd.Name() != "country_code":
				m.Set(fd, next(fd))
			}
		}
	}
	walk(m.ProtoReflect(), false)
	return markers
}

// deadLetterCopy publishes into the prison's outbox a copy of ev that no agency can read:
// its own encoding, personal data and all, with a field after it that never ends. The
// recipient dead-letters it, and a dead letter must show none of what it held.
func deadLetterCopy(t *testing.T, sys *system, ev *throughcarev1.Event, id string) {
	t.Helper()
	msg, err := eventbus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	msg.Data = append(msg.Data, 0x0a, 0xff)
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := sys.JS[prisonAgency].PublishMsg(testCtx(t), msg); err != nil {
		t.Fatal(err)
	}
}

// recordFlowFeed follows the console's flow feed as a browser does, for the whole test.
func recordFlowFeed(t *testing.T, base string) *syncBuffer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"api/flow/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(out, resp.Body); close(copied) }()
	t.Cleanup(func() { cancel(); <-copied; resp.Body.Close() })
	return out
}

func fetch(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestConsoleShowsAJourneyInChromiumWithoutPersonalData opens the console in headless
// Chromium, then runs a journey whose every personal-data field, and every actor, holds a
// marker: a referral to probation left unacknowledged past its deadline, with a copy of
// it that probation cannot read (dead-lettered), and one to social work answered, asked
// about and declined. The page shows it as it happens: the four agencies of the protocol, the
// edges' counts going up, the overdue handover at both ends, the dead letter, the inboxes'
// health. The screenshot has the picture drawn; no marker is in the page or in anything
// the console's feed sent. When an agency is down the panels that ask it say so.
func TestConsoleShowsAJourneyInChromiumWithoutPersonalData(t *testing.T) {
	tab, thrown := openBrowser(t)
	// The shipped protocol with a fourth agency: the picture has what the registry has.
	fourAgencies, err := protocol.Load(withPCVE)
	if err != nil {
		t.Fatal(err)
	}
	sys := newSystem(t, withProtocol(fourAgencies), withConfig(probationAgency, func(c *handover.Config) { c.AcknowledgeWithin = 300 * time.Millisecond }))
	prisonSent := watchSent(t, sys, prisonAgency)
	base := startConsole(t, sys, "--protocol", withPCVE)
	feed := recordFlowFeed(t, base)
	ctx := testCtx(t)

	if err := chromedp.Do(tab, chromedp.EmulateViewport(consoleWidth, consoleHeight), chromedp.Navigate(base),
		chromedp.WaitVisible(`#nodes .node`)); err != nil {
		t.Fatalf("open the console: %v", err)
	}
	drawn, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#nodes .node')].map(n => n.dataset.agency)`))
	if err != nil || len(drawn) != 4 || !slices.Equal(drawn, sys.Agencies.IDs()) {
		t.Fatalf("agencies drawn: %v (%v), want the protocol's %v", drawn, err, sys.Agencies.IDs())
	}
	routes := 0
	for _, a := range sys.Agencies.IDs() {
		routes += len(sys.Agencies.Peers(a))
	}
	waitInPage(t, tab, "an edge for each direction between peers, nothing counted yet",
		fmt.Sprintf(`document.querySelectorAll('#edges .edge').length === %d && `+edgeOf+`.dataset.events === '0'`, routes, prisonAgency, probationAgency))

	// The journey, every personal datum a marker.
	rc := fullReleaseCase(61)
	inCase := markPersonalData(rc)
	markers := slices.Clone(inCase)
	// mark is a marker for a free text or an actor of the journey.
	mark := func(what string) string {
		m := "PDMARK" + strings.ToUpper(what) + "Z"
		markers = append(markers, m)
		return m
	}
	opened, err := sys.Prison.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{Actor: mark("opener"), ReleaseCase: rc})
	if err != nil {
		t.Fatalf("open case: %v", err)
	}
	stored := prototext.Format(opened.GetReleaseCase())
	for _, m := range inCase {
		if !strings.Contains(stored, m) {
			t.Fatalf("the opened case lost marker %s: the check below would prove nothing of it", m)
		}
	}
	caseID := opened.GetReleaseCase().GetCaseId()
	if _, err := sys.Prison.RecordConsent(ctx, &throughcarev1.RecordConsentRequest{Actor: mark("consenter"), CaseId: caseID, Category: catHealth, Recipient: socialWorkAgency}); err != nil {
		t.Fatalf("record consent: %v", err)
	}
	referTo := func(recipient string, purpose throughcarev1.Purpose) string {
		resp, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: mark("referrer"), CaseId: caseID, Recipient: recipient, Purpose: purpose})
		if err != nil {
			t.Fatalf("refer to %s: %v", recipient, err)
		}
		return resp.GetHandover().GetHandoverId()
	}
	late := referTo(probationAgency, purposeSupervision)
	waitState(t, sys.Handovers[prisonAgency], late, stateDelivered)
	deadLetterCopy(t, sys, prisonSent.last(t, "tc.prison.out.probation.handover_referred"), "console-unreadable-1")

	declined := referTo(socialWorkAgency, purposeAssistance)
	sw := sys.Handovers[socialWorkAgency]
	waitState(t, sys.Handovers[prisonAgency], declined, stateDelivered)
	if err := acknowledge(ctx, sw, declined, mark("acknowledger")); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	asked, err := sw.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: mark("asker"), HandoverId: declined, Question: "Which hostel? " + mark("question")})
	if err != nil {
		t.Fatalf("request information: %v", err)
	}
	waitState(t, sys.Handovers[prisonAgency], declined, stateInfoReq)
	if _, err := sys.Handovers[prisonAgency].ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: mark("answerer"), HandoverId: declined,
		RequestId: asked.GetHandover().GetInformationRequests()[0].GetRequestId(), Answer: "Celica " + mark("answer")}); err != nil {
		t.Fatalf("provide information: %v", err)
	}
	waitState(t, sw, declined, stateAcknowledged)
	if _, err := sw.DeclineHandover(ctx, &throughcarev1.DeclineHandoverRequest{Actor: mark("decliner"), HandoverId: declined, Reason: throughcarev1.DeclineReason_DECLINE_REASON_OTHER, Note: "No place " + mark("note")}); err != nil {
		t.Fatalf("decline: %v", err)
	}
	waitState(t, sys.Handovers[prisonAgency], declined, stateDeclined)

	// The page shows it, as it comes.
	waitInPage(t, tab, "the referral to probation counted on its edge and in the routes",
		fmt.Sprintf(`(e => e.dataset.handovers === '1' && document.querySelector('#counts .count[data-from="%[1]s"][data-to="%[2]s"] text').textContent === e.dataset.events)(`+
			`document.querySelector('#edges .edge[data-from="%[1]s"][data-to="%[2]s"]')) && `+
			`document.querySelector('#routes tr[data-from="%[1]s"][data-to="%[2]s"] td:nth-child(3)').textContent === '1'`, prisonAgency, probationAgency))
	waitInPage(t, tab, "probation's receipt counted on the way back", fmt.Sprintf(edgeOf+`.dataset.events >= 1`, probationAgency, prisonAgency))
	waitInPage(t, tab, "social work's receipts counted, its decline among the latest events",
		fmt.Sprintf(edgeOf+`.dataset.events >= 4 && [...document.querySelectorAll('#recent tr[data-handover="%s"]')].some(r => r.textContent.includes('declined → declined'))`,
			socialWorkAgency, prisonAgency, declined))
	waitInPage(t, tab, "a dot sent along an edge", `Number(document.getElementById('graph').dataset.dots) >= 2`)
	waitInPage(t, tab, "the late acknowledgement overdue at the prison and at probation",
		fmt.Sprintf(rowOf+` && `+rowOf, "overdue", late, `[data-agency="prison"]`, "overdue", late, `[data-agency="probation"]`))
	waitInPage(t, tab, "probation's dead letter", fmt.Sprintf(rowOf, "deadletters", late, `[data-agency="probation"][data-stream="INBOX_PROBATION"]`))
	waitInPage(t, tab, "the inboxes' health", `document.querySelector('#streams tr[data-stream="INBOX_PROBATION"]') && document.querySelector('#streams tr[data-stream="FLOW"]')`)
	waitInPage(t, tab, "the summary", `document.getElementById('summary-overdue').textContent === 'overdue: 2' && document.getElementById('summary-deadletters').textContent === 'dead letters: 1' && document.getElementById('summary-flow').textContent === 'flow: live'`)
	if onTime, err := chromedp.Run(tab, chromedp.Evaluate[bool](fmt.Sprintf(rowOf+` !== null`, "overdue", declined, ""))); err != nil || onTime {
		t.Errorf("the overdue table lists %s, which met its deadlines (%v)", declined, err)
	}

	checkConsoleScreenshot(t, tab)

	// No marker anywhere the console put it: the page, and every answer of its feed.
	page, err := chromedp.Run(tab, chromedp.OuterHTML("html"))
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{"the page's HTML": page, "the flow feed's events": feed.String()}
	for _, path := range []string{"", "console.js", "console.css", "api/flow", "api/overdue", "api/deadletters", "api/streams"} {
		code, body := fetch(t, base+path)
		if code != http.StatusOK {
			t.Fatalf("GET /%s: %d %s", path, code, body)
		}
		outputs["/"+path] = body
	}
	for what, holds := range map[string]string{
		"the page's HTML": late, "the flow feed's events": declined, "/api/flow": declined,
		"/api/overdue": late, "/api/deadletters": late, "/api/streams": "INBOX_PROBATION",
	} {
		if !strings.Contains(outputs[what], holds) {
			t.Errorf("%s lacks %s: it does not show the journey, so its lack of markers proves nothing", what, holds)
		}
	}
	for what, out := range outputs {
		for _, m := range markers {
			if strings.Contains(out, m) {
				t.Errorf("%s shows personal data: marker %s", what, m)
			}
		}
	}

	// An agency down: the panels that ask it say so, and which.
	sys.Stop(socialWorkAgency)
	for _, panel := range []string{"overdue", "deadletters"} {
		waitInPage(t, tab, "the "+panel+" panel failing on social work",
			fmt.Sprintf(`document.getElementById('%s').classList.contains('failed') && document.querySelector('#%s .error').textContent.includes('socialwork')`, panel, panel))
	}
	if shot, err := chromedp.Run(tab, chromedp.CaptureScreenshot()); err == nil {
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "console-agency-down.png"), shot, 0o644)
	}
	if errs := thrown(); len(errs) > 0 {
		t.Errorf("the page threw: %v", errs)
	}
}

// checkConsoleScreenshot photographs the console and checks the picture is drawn: the
// window's size, far from blank, the prison's node in its colour and the prison →
// probation edge drawn in the colour of an edge that carried events. It keeps the image
// (go test -artifacts keeps it after the test).
func checkConsoleScreenshot(t *testing.T, tab context.Context) {
	t.Helper()
	shot, err := chromedp.Run(tab, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.ArtifactDir(), "console.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is no PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != consoleWidth || b.Dy() != consoleHeight {
		t.Fatalf("screenshot %dx%d, want the window's %dx%d", b.Dx(), b.Dy(), consoleWidth, consoleHeight)
	}
	colours := map[color.RGBA]bool{}
	for y := 0; y < consoleHeight; y += 3 {
		for x := 0; x < consoleWidth; x += 3 {
			colours[rgba(img.At(x, y))] = true
		}
	}
	if len(colours) < 64 {
		t.Errorf("screenshot has %d colours: a blank or unstyled page", len(colours))
	}

	// Where the page drew the prison and the edge to probation, in the window's pixels.
	type point struct{ X, Y float64 }
	where, err := chromedp.Run(tab, chromedp.Evaluate[struct {
		Node   point
		Radius float64
		Edge   []point
	}](fmt.Sprintf(`(() => {
		const c = document.querySelector('#nodes .node[data-agency="%s"] circle').getBoundingClientRect();
		const path = document.querySelector('#edges .edge[data-from="%s"][data-to="%s"] path');
		const len = path.getTotalLength(), m = path.getScreenCTM();
		const edge = [0.15, 0.25, 0.35, 0.65, 0.75, 0.85].map(f => path.getPointAtLength(len * f).matrixTransform(m));
		return {node: {x: c.x + c.width / 2, y: c.y + c.height / 2}, radius: c.width / 2, edge: edge.map(p => ({x: p.x, y: p.y}))};
	})()`, prisonAgency, prisonAgency, probationAgency)))
	if err != nil {
		t.Fatalf("where the picture is: %v", err)
	}
	nodeFill, active := color.RGBA{0x1f, 0x4e, 0x79, 0xff}, color.RGBA{0x2b, 0x6c, 0xb0, 0xff}
	// Above the name, inside the circle.
	if got := rgba(img.At(int(where.Node.X), int(where.Node.Y-where.Radius*0.6))); !near(got, nodeFill) {
		t.Errorf("the prison's node at (%.0f, %.0f) is %v in the screenshot, want its fill %v", where.Node.X, where.Node.Y, got, nodeFill)
	}
	// A dot may be passing over a point: most of them must show the edge.
	drawn := 0
	for _, p := range where.Edge {
	search:
		for dy := -1; dy <= 1; dy++ {
			for dx := -1; dx <= 1; dx++ {
				if near(rgba(img.At(int(p.X)+dx, int(p.Y)+dy)), active) {
					drawn++
					break search
				}
			}
		}
	}
	if drawn < len(where.Edge)-2 {
		t.Errorf("the prison → probation edge shows in %d of %d points along it (%v), want it drawn in %v", drawn, len(where.Edge), where.Edge, active)
	}
}

func rgba(c color.Color) color.RGBA {
	r, g, b, a := c.RGBA()
	return color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}
}

// near allows for anti-aliasing and colour management.
func near(a, b color.RGBA) bool {
	d := func(x, y uint8) int { return max(int(x)-int(y), int(y)-int(x)) }
	return d(a.R, b.R) <= 24 && d(a.G, b.G) <= 24 && d(a.B, b.B) <= 24
}

// TestConsoleFlagsNameWhatIsWrong: the console listens on the loopback alone.
func TestConsoleFlagsNameWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "0.0.0.0:7180"}, "--addr"},
		{[]string{"--addr", ":7180"}, "--addr"},
		{[]string{"--since", "yesterday"}, "--since"},
		{[]string{"--refresh", "1ms"}, "--refresh"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		_, err := parseConsoleConfig(tc.args, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("console %v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	var usage bytes.Buffer
	if _, err := parseConsoleConfig([]string{"-h"}, func(string) string { return "" }, &usage); !errors.Is(err, errUsage) || !strings.Contains(usage.String(), "127.0.0.1:7180") {
		t.Errorf("console -h: %v\n%s\nwant the usage, naming where it listens", err, usage.String())
	}
	c, err := parseConsoleConfig(nil, func(name string) string {
		return map[string]string{"THROUGHCARE_ADDR": "localhost:7999"}[name]
	}, io.Discard)
	if err != nil || c.Addr != "localhost:7999" || c.Since != "1h" {
		t.Errorf("console from the environment: %+v, %v", c, err)
	}
}
