"""SMS encoding and segment counts (GSM 03.38 / 3GPP TS 23.038): exact boundaries."""
from __future__ import annotations

import pytest

from services.notifier.domain.sms_length import GSM7_BASIC, GSM7_EXTENSION, SmsLength, is_gsm7, sms_segments


def test_the_gsm7_tables_have_the_standard_sizes():
    assert len(GSM7_BASIC) == 127  # 128 code points less the escape to the extension table
    assert GSM7_EXTENSION == frozenset("\f^{}\\[~]|€")


def test_empty_text_is_no_segment():
    assert sms_segments("") == SmsLength("GSM-7", 0, 0)


@pytest.mark.parametrize(("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)])
def test_gsm7_single_160_then_153_per_segment(length, segments):
    assert sms_segments("a" * length) == SmsLength("GSM-7", length, segments)


def test_extension_characters_count_two_septets():
    assert sms_segments("€") == SmsLength("GSM-7", 2, 1)
    assert sms_segments("a" * 158 + "€") == SmsLength("GSM-7", 160, 1)
    assert sms_segments("a" * 159 + "€") == SmsLength("GSM-7", 161, 2)
    assert sms_segments("a" * 159 + "\f") == SmsLength("GSM-7", 161, 2)  # form feed is in the extension table
    for char in "^{}\\[~]|":
        assert sms_segments(char).characters == 2


def test_an_escape_sequence_is_never_split_across_segments():
    # 306 septets would be 2 segments of 153, but the € (ESC + septet) cannot start on the 153rd
    text = "a" * 152 + "€" + "a" * 152
    assert sms_segments(text) == SmsLength("GSM-7", 306, 3)
    assert sms_segments("a" * 151 + "€" + "a" * 153) == SmsLength("GSM-7", 306, 2)


@pytest.mark.parametrize(
    "char", list("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà\n\r"))
def test_gsm7_basic_characters_including_its_few_accented_letters(char):
    assert is_gsm7(char)
    assert sms_segments("a" * 159 + char) == SmsLength("GSM-7", 160, 1)


@pytest.mark.parametrize("char", list("şŞğĞıİçřěšŘĚŠžůčáíóúÁ") + ["\t", "`", "\u2068", "\u200e", "\xa0", "٫", "ل"])
def test_anything_else_makes_the_text_ucs2(char):
    length = sms_segments("Pay now " + char)
    assert length.encoding == "UCS-2"
    assert length.characters == 9


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)])
def test_ucs2_single_70_then_67_per_segment(length, segments):
    assert sms_segments("ş" * length) == SmsLength("UCS-2", length, segments)


def test_characters_outside_the_bmp_count_two_utf16_units():
    assert sms_segments("😀") == SmsLength("UCS-2", 2, 1)
    assert sms_segments("a" * 68 + "😀") == SmsLength("UCS-2", 70, 1)
    assert sms_segments("a" * 69 + "😀") == SmsLength("UCS-2", 71, 2)
    # a surrogate pair is never split: the emoji cannot take the 67th unit of the first segment
    assert sms_segments("a" * 66 + "😀" + "a" * 66) == SmsLength("UCS-2", 134, 3)
    assert sms_segments("a" * 65 + "😀" + "a" * 67) == SmsLength("UCS-2", 134, 2)


def test_one_non_gsm_character_changes_the_whole_text():
    english = "Reply STOP to opt out. " * 6  # 138 characters
    assert sms_segments(english) == SmsLength("GSM-7", 138, 1)
    assert sms_segments(english + "ı") == SmsLength("UCS-2", 139, 3)
