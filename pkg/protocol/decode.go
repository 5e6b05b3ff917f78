package protocol

import (
	"cmp"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"buf.build/go/protoyaml"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
)

// decode parses and validates a protocol file, choosing the format by name.
func decode(name string, data []byte) (*throughcarev1.SharingProtocol, error) {
	sp := &throughcarev1.SharingProtocol{}
	switch ext := strings.ToLower(filepath.Ext(name)); ext {
	case ".textproto", ".txtpb", ".txt":
		if err := prototext.Unmarshal(data, sp); err != nil {
			return nil, errors.New(textPosition(name, err))
		}
		// The text format keeps no positions, so problems name the field path instead.
		if err := validateProtocol(sp); err != nil {
			return nil, unpositioned(name, err)
		}
	case ".yaml", ".yml":
		// protoyaml runs the validator itself so that it can point at the offending node.
		opts := protoyaml.UnmarshalOptions{Path: name, Validator: protocolValidator{}}
		if err := opts.Unmarshal(data, sp); err != nil {
			return nil, yamlProblems(name, err)
		}
	default:
		return nil, fmt.Errorf("%s: unsupported protocol file extension %q: use .textproto, .txtpb, .txt, .yaml or .yml", name, ext)
	}
	return sp, nil
}

// protocolValidator runs the contract's protovalidate rules and then the rules that span
// several rules of the protocol, reporting both as violations so protoyaml can place them.
type protocolValidator struct{}

func (protocolValidator) Validate(msg proto.Message) error {
	sp, ok := msg.(*throughcarev1.SharingProtocol)
	if !ok {
		return fmt.Errorf("validate protocol: got %T, want *throughcarev1.SharingProtocol", msg)
	}
	return validateProtocol(sp)
}

// validateProtocol returns a *protovalidate.ValidationError listing every violation, or
// another error when validation itself could not run.
func validateProtocol(sp *throughcarev1.SharingProtocol) error {
	var violations []*protovalidate.Violation
	var verr *protovalidate.ValidationError
	switch err := protovalidate.Validate(sp); {
	case err == nil:
	case errors.As(err, &verr):
		violations = append(violations, verr.Violations...)
	default:
		return fmt.Errorf("validate protocol: %w", err)
	}
	violations = append(violations, crossRuleViolations(sp)...)
	if len(violations) == 0 {
		return nil
	}
	return &protovalidate.ValidationError{Violations: violations}
}

// crossRuleViolations checks what protovalidate cannot express on one message: one rule per
// (sender, recipient, purpose), and only agencies that signed the protocol in its rules.
func crossRuleViolations(sp *throughcarev1.SharingProtocol) []*protovalidate.Violation {
	var violations []*protovalidate.Violation
	names := map[string]string{}
	for i, a := range sp.GetAgencies() {
		if _, dup := names[a.GetId()]; dup {
			violations = append(violations, violation(agencyPath(i), "protocol.agency_unique",
				fmt.Sprintf("agency %q is declared twice", a.GetId())))
		}
		names[a.GetId()] = cmp.Or(a.GetDisplayName(), a.GetId())
	}
	first := map[ruleKey]int{}
	for i, r := range sp.GetRules() {
		key := ruleKey{r.GetSender(), r.GetRecipient(), r.GetPurpose()}
		if j, dup := first[key]; dup {
			violations = append(violations, violation(rulePath(i, ""), "protocol.rule_unique",
				fmt.Sprintf("rules[%d] already lets %s share with %s for %s; merge the two rules",
					j, names[key.sender], names[key.recipient], key.purpose)))
		} else {
			first[key] = i
		}
		for _, side := range []struct {
			field  protoreflect.Name
			agency string
		}{{"sender", r.GetSender()}, {"recipient", r.GetRecipient()}} {
			// An empty or malformed id is protovalidate's to report.
			if _, signed := names[side.agency]; agency.ValidID(side.agency) && !signed {
				violations = append(violations, violation(rulePath(i, side.field), "protocol.rule_signed",
					fmt.Sprintf("%q is not among the protocol's agencies", side.agency)))
			}
		}
	}
	return violations
}

// agencyPath is the path of agencies[index].id.
func agencyPath(index int) *validate.FieldPath {
	agencies := (&throughcarev1.SharingProtocol{}).ProtoReflect().Descriptor().Fields().ByName("agencies")
	id := (&throughcarev1.Agency{}).ProtoReflect().Descriptor().Fields().ByName("id")
	elements := []*validate.FieldPathElement{pathElement(agencies), pathElement(id)}
	elements[0].Subscript = &validate.FieldPathElement_Index{Index: uint64(index)}
	return &validate.FieldPath{Elements: elements}
}

func violation(path *validate.FieldPath, ruleID, message string) *protovalidate.Violation {
	return &protovalidate.Violation{Proto: &validate.Violation{
		Field:   path,
		RuleId:  proto.String(ruleID),
		Message: proto.String(message),
	}}
}

// rulePath is the path of rules[index], or of its field when field is not empty.
func rulePath(index int, field protoreflect.Name) *validate.FieldPath {
	rules := (&throughcarev1.SharingProtocol{}).ProtoReflect().Descriptor().Fields().ByName("rules")
	elements := []*validate.FieldPathElement{pathElement(rules)}
	elements[0].Subscript = &validate.FieldPathElement_Index{Index: uint64(index)}
	if field != "" {
		fd := (&throughcarev1.SharingRule{}).ProtoReflect().Descriptor().Fields().ByName(field)
		elements = append(elements, pathElement(fd))
	}
	return &validate.FieldPath{Elements: elements}
}

func pathElement(fd protoreflect.FieldDescriptor) *validate.FieldPathElement {
	return &validate.FieldPathElement{
		FieldNumber: proto.Int32(int32(fd.Number())),
		FieldName:   proto.String(string(fd.Name())),
		FieldType:   descriptorpb.FieldDescriptorProto_Type(fd.Kind()).Enum(),
	}
}

// describeViolation renders a violation as protoyaml does, so both formats read alike.
func describeViolation(v *protovalidate.Violation) string {
	text := v.Proto.GetMessage()
	if path := protovalidate.FieldPathString(v.Proto.GetField()); path != "" {
		text = path + ": " + text
	}
	if id := v.Proto.GetRuleId(); id != "" {
		text += " (" + id + ")"
	}
	return text
}

// unpositioned reports a validation error of a file format without positions.
func unpositioned(name string, err error) error {
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		return fmt.Errorf("%s: %w", name, err)
	}
	problems := make([]error, 0, len(verr.Violations))
	for _, v := range verr.Violations {
		problems = append(problems, fmt.Errorf("%s: %s", name, describeViolation(v)))
	}
	return errors.Join(problems...)
}

// textPositionPattern finds the position prototext puts in its errors, "(line 12:7): ". The
// text before it is left out: prototext varies its "proto:" prefix on purpose.
var textPositionPattern = regexp.MustCompile(`(syntax error )?\(line (\d+):(\d+)\): `)

// textPosition rewrites a prototext error as "name:line:column: reason".
func textPosition(name string, err error) string {
	text := err.Error()
	loc := textPositionPattern.FindStringSubmatchIndex(text)
	if loc == nil {
		return name + ": " + text
	}
	reason := text[loc[1]:]
	if loc[2] >= 0 {
		reason = "syntax error: " + reason
	}
	return fmt.Sprintf("%s:%s:%s: %s", name, text[loc[4]:loc[5]], text[loc[6]:loc[7]], reason)
}

// yamlLinePattern matches the errors of the YAML parser, which know the line only.
var yamlLinePattern = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlProblems rewrites protoyaml's errors, "name:line:column reason" followed by a
// snippet of the file, as one "name:line:column: reason" line each.
func yamlProblems(name string, err error) error {
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	problems := make([]error, 0, len(errs))
	for _, e := range errs {
		problems = append(problems, errors.New(yamlProblem(name, e)))
	}
	return errors.Join(problems...)
}

func yamlProblem(name string, err error) string {
	text, _, _ := strings.Cut(err.Error(), "\n")
	if m := yamlLinePattern.FindStringSubmatch(text); m != nil {
		return fmt.Sprintf("%s:%s: %s", name, m[1], m[2])
	}
	rest, ok := strings.CutPrefix(text, name+":")
	if !ok {
		return name + ": " + text
	}
	position, reason, ok := strings.Cut(rest, " ")
	line, column, hasColumn := strings.Cut(position, ":")
	if !ok || !hasColumn || !isNumber(line) || !isNumber(column) {
		return name + ": " + rest
	}
	return fmt.Sprintf("%s:%s:%s: %s", name, line, column, reason)
}

func isNumber(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}
