package main

import "go.yaml.in/yaml/v3"

// object is a mapping that keeps its keys in the order they were added, so the catalogue
// reads top-down (asyncapi, info, servers, channels, ...) and properties follow the
// contract's field order, the same on every run.
type object []member

type member struct {
	key   string
	value any
}

// MarshalYAML writes the members in order; keys are always strings, as JSON wants.
func (o object) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, m := range o {
		var v yaml.Node
		if err := v.Encode(m.value); err != nil {
			return nil, err
		}
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: m.key}, &v)
	}
	return n, nil
}

// with is o and one more member, in a new slice: objects built from one base never share
// their members.
func (o object) with(key string, value any) object {
	return append(o[:len(o):len(o)], member{key, value})
}
