package protocol

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds protocol files of every supported kind to Parse: it must never panic,
// and whatever it accepts must be a usable protocol that enforces without error.
func FuzzParse(f *testing.F) {
	textproto, err := os.ReadFile("default.textproto")
	if err != nil {
		f.Fatal(err)
	}
	yaml, err := os.ReadFile("testdata/default.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("p.textproto", textproto)
	f.Add("p.yaml", yaml)
	f.Add("p.yaml", []byte("protocol_id: x\nversion: 1\nrules: [{sender: prison}]"))
	f.Add("p.textproto", []byte(`rules { sender: "prison" recipient: "prison" }`))
	f.Add("p.txt", []byte{})
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if !strings.HasSuffix(name, ".yaml") && !strings.HasSuffix(name, ".textproto") {
			name += ".textproto"
		}
		p, err := Parse(name, data)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a protocol and an error %v", err)
			}
			return
		}
		for _, rule := range p.Proto().GetRules() {
			if _, err := p.Enforce(fullCase(), rule.GetSender(), rule.GetRecipient(), rule.GetPurpose(), nil); err != nil {
				t.Fatalf("an accepted protocol cannot enforce its own rule %v: %v", rule, err)
			}
		}
	})
}
