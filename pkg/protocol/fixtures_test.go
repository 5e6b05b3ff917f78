package protocol

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Short names for the enums the tests use again and again.
const (
	prison     = "prison"
	probation  = "probation"
	socialWork = "socialwork"

	supervision  = throughcarev1.Purpose_PURPOSE_SUPERVISION
	assistance   = throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE
	coordination = throughcarev1.Purpose_PURPOSE_COORDINATION

	identityCategory      = throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY
	contactCategory       = throughcarev1.DataCategory_DATA_CATEGORY_CONTACT
	legalCategory         = throughcarev1.DataCategory_DATA_CATEGORY_LEGAL
	releasePlanCategory   = throughcarev1.DataCategory_DATA_CATEGORY_RELEASE_PLAN
	accommodationCategory = throughcarev1.DataCategory_DATA_CATEGORY_ACCOMMODATION
	educationCategory     = throughcarev1.DataCategory_DATA_CATEGORY_EDUCATION_WORK
	healthCategory        = throughcarev1.DataCategory_DATA_CATEGORY_HEALTH
	substanceCategory     = throughcarev1.DataCategory_DATA_CATEGORY_SUBSTANCE_USE
	financeCategory       = throughcarev1.DataCategory_DATA_CATEGORY_FINANCE_ID
	familyCategory        = throughcarev1.DataCategory_DATA_CATEGORY_FAMILY
	behaviourCategory     = throughcarev1.DataCategory_DATA_CATEGORY_BEHAVIOUR
	riskCategory          = throughcarev1.DataCategory_DATA_CATEGORY_RISK
	extremismCategory     = throughcarev1.DataCategory_DATA_CATEGORY_EXTREMISM_RISK
	workerSafetyCategory  = throughcarev1.DataCategory_DATA_CATEGORY_WORKER_SAFETY
	supervisionCategory   = throughcarev1.DataCategory_DATA_CATEGORY_SUPERVISION
	assistanceCategory    = throughcarev1.DataCategory_DATA_CATEGORY_ASSISTANCE
	unspecifiedCategory   = throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED

	notAllowed = throughcarev1.WithholdReason_WITHHOLD_REASON_NOT_ALLOWED
	noConsent  = throughcarev1.WithholdReason_WITHHOLD_REASON_NO_CONSENT
)

// allCategories is every category of the contract, in enum order.
var allCategories = []throughcarev1.DataCategory{
	identityCategory, contactCategory, legalCategory, releasePlanCategory, accommodationCategory,
	educationCategory, healthCategory, substanceCategory, financeCategory, familyCategory,
	behaviourCategory, riskCategory, extremismCategory, workerSafetyCategory,
	supervisionCategory, assistanceCategory,
}

// caseFields names the ReleaseCase field of each category, so tests can look at and clear
// categories without going through the markers the code under test reads.
var caseFields = map[throughcarev1.DataCategory]protoreflect.Name{
	identityCategory:      "person",
	contactCategory:       "contact",
	legalCategory:         "sentence",
	releasePlanCategory:   "release_plan",
	accommodationCategory: "accommodation",
	educationCategory:     "education_work",
	healthCategory:        "health",
	substanceCategory:     "substance_use",
	financeCategory:       "finance_id",
	familyCategory:        "family",
	behaviourCategory:     "behaviour",
	riskCategory:          "risk",
	extremismCategory:     "extremism",
	workerSafetyCategory:  "worker_safety",
	supervisionCategory:   "supervision_plan",
	assistanceCategory:    "assistance_plan",
}

func caseField(category throughcarev1.DataCategory) protoreflect.FieldDescriptor {
	return (&throughcarev1.ReleaseCase{}).ProtoReflect().Descriptor().Fields().ByName(caseFields[category])
}

// holds reports whether c holds data of category.
func holds(c *throughcarev1.ReleaseCase, category throughcarev1.DataCategory) bool {
	return c.ProtoReflect().Has(caseField(category))
}

// clearCategories removes categories from c.
func clearCategories(c *throughcarev1.ReleaseCase, categories ...throughcarev1.DataCategory) {
	for _, category := range categories {
		c.ProtoReflect().Clear(caseField(category))
	}
}

func need(summary string) *throughcarev1.Need {
	return &throughcarev1.Need{
		Level:   throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM,
		Summary: summary,
		Actions: []string{"refer to " + summary + " service", "review in 4 weeks"},
	}
}

func date(year, month, day int32) *throughcarev1.Date {
	return &throughcarev1.Date{Year: year, Month: month, Day: day}
}

// fullCase is a release case with every field populated, as the prison holds it.
func fullCase() *throughcarev1.ReleaseCase {
	address := &throughcarev1.Address{
		Lines:       []string{"Flat 2", "14 Harbour Street"},
		Postcode:    "11000",
		Locality:    "Belgrade",
		CountryCode: "RS",
	}
	return &throughcarev1.ReleaseCase{
		CaseId:     "case-01HZY3K6Q4",
		Revision:   7,
		State:      throughcarev1.CaseState_CASE_STATE_OPEN,
		Owner:      prison,
		CreateTime: &timestamppb.Timestamp{Seconds: 1_780_000_000, Nanos: 123},
		UpdateTime: &timestamppb.Timestamp{Seconds: 1_780_100_000, Nanos: 456},
		Person: &throughcarev1.Person{
			GivenName:    "Ana",
			FamilyName:   "Petrović",
			DateOfBirth:  date(1990, 4, 12),
			NationalId:   "1204990710012",
			PrisonNumber: "P-4411",
		},
		Contact: &throughcarev1.Contact{Phone: "+381 60 000 0000", Email: "ana@example.org", Address: address},
		Sentence: &throughcarev1.Sentence{
			Offences:        []string{"offence under Art. 391 of the Criminal Code"},
			StartDate:       date(2022, 1, 10),
			SentenceEndDate: date(2027, 1, 10),
			LengthDays:      1826,
			Court:           "Higher Court in Belgrade",
		},
		ReleasePlan: &throughcarev1.ReleasePlan{
			ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_CONDITIONAL_RELEASE,
			ExpectedReleaseDate: date(2026, 9, 1),
			ReleaseAddress:      address,
		},
		Accommodation: need("housing"),
		EducationWork: need("employment"),
		Health:        need("mental health"),
		SubstanceUse:  need("alcohol"),
		FinanceId:     need("identity papers"),
		Family:        need("family contact"),
		Behaviour:     need("thinking skills"),
		Risk: &throughcarev1.RiskAssessment{
			Reoffending: throughcarev1.RiskLevel_RISK_LEVEL_MEDIUM,
			SeriousHarm: throughcarev1.RiskLevel_RISK_LEVEL_HIGH,
			Summary:     "risk to former partner",
			AssessedOn:  date(2026, 3, 1),
		},
		Extremism: &throughcarev1.ExtremismAssessment{
			Level:      throughcarev1.RiskLevel_RISK_LEVEL_LOW,
			Instrument: "VERA-2R",
			Summary:    "disengaged",
			AssessedOn: date(2026, 3, 2),
		},
		WorkerSafety: &throughcarev1.WorkerSafetyWarning{VisitInPairs: true, Note: "visit in pairs"},
		SupervisionPlan: &throughcarev1.SupervisionPlan{
			Officer:               "officer-17",
			LicenceConditions:     []string{"reside at approved address"},
			ReportingIntervalDays: 7,
			SupervisionEndDate:    date(2027, 1, 10),
			Summary:               "weekly reporting",
		},
		AssistancePlan: &throughcarev1.AssistancePlan{
			Worker:   "worker-9",
			Services: []string{"housing benefit"},
			Summary:  "help with benefits",
		},
		Consents: []*throughcarev1.Consent{
			{Category: healthCategory, Recipient: socialWork, GivenTime: &timestamppb.Timestamp{Seconds: 1_780_000_500}},
		},
	}
}

// consentTo returns standing consents to share categories with recipient.
func consentTo(recipient string, categories ...throughcarev1.DataCategory) []*throughcarev1.Consent {
	consents := make([]*throughcarev1.Consent, len(categories))
	for i, c := range categories {
		consents[i] = &throughcarev1.Consent{Category: c, Recipient: recipient, GivenTime: timestamppb.Now()}
	}
	return consents
}

// withdrawn marks consents withdrawn.
func withdrawn(consents []*throughcarev1.Consent) []*throughcarev1.Consent {
	for _, c := range consents {
		c.WithdrawnTime = timestamppb.Now()
	}
	return consents
}

// without returns allCategories minus the given ones.
func without(categories ...throughcarev1.DataCategory) []throughcarev1.DataCategory {
	return slices.DeleteFunc(slices.Clone(allCategories), func(c throughcarev1.DataCategory) bool {
		return slices.Contains(categories, c)
	})
}

func cloneCase(t testing.TB, c *throughcarev1.ReleaseCase) *throughcarev1.ReleaseCase {
	t.Helper()
	return proto.Clone(c).(*throughcarev1.ReleaseCase)
}
